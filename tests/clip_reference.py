"""An independent CLIP text-encoder self-attention, computed by hand from a checkpoint's weights (for tests)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {"quick_gelu": lambda m: m * torch.sigmoid(1.702 * m), "gelu": F.gelu}


def clip_reference_attention(state_dict: dict, prefix: str, ids: list[int], heads: int = 12,
                             activation: str = "quick_gelu") -> torch.Tensor:
    """Self-attention of every layer and head of a CLIP text encoder stored under ``prefix`` (HF layout, e.g.
    ``cond_stage_model.transformer.text_model.``): embeddings, then per layer LN → q/k/v projections → causal
    softmax(qkᵀ/√d) → out proj → residual → MLP. Width and depth are read from the weights; ``heads`` and the MLP
    ``activation`` are the model's (CLIP-L: 12, quick_gelu; CLIP-H: 16, gelu; CLIP-G: 20, gelu).
    Returns ``[layers, heads, T, T]``."""
    w = lambda k: state_dict[prefix + k].float()  # noqa: E731
    t = len(ids)
    x = w("embeddings.token_embedding.weight")[torch.tensor(ids)] + w("embeddings.position_embedding.weight")[:t]
    width = x.shape[-1]
    depth = 1 + max(int(k[len(prefix):].split(".")[2]) for k in state_dict
                    if k.startswith(prefix + "encoder.layers."))
    causal = torch.full((t, t), float("-inf")).triu(1)
    d = width // heads
    act = ACTIVATIONS[activation]
    out = []
    for i in range(depth):
        layer = f"encoder.layers.{i}."
        h = F.layer_norm(x, (width,), w(layer + "layer_norm1.weight"), w(layer + "layer_norm1.bias"), eps=1e-5)
        proj = lambda name, v, layer=layer: v @ w(layer + f"self_attn.{name}.weight").T + w(layer + f"self_attn.{name}.bias")  # noqa: E731
        q, k, v = proj("q_proj", h), proj("k_proj", h), proj("v_proj", h)
        probs = torch.stack([torch.softmax(q[:, j * d:(j + 1) * d] @ k[:, j * d:(j + 1) * d].T / d ** 0.5 + causal, -1)
                             for j in range(heads)])                                     # [heads, T, T]
        out.append(probs)
        o = torch.cat([probs[j] @ v[:, j * d:(j + 1) * d] for j in range(heads)], dim=-1)
        x = x + proj("out_proj", o)
        h2 = F.layer_norm(x, (width,), w(layer + "layer_norm2.weight"), w(layer + "layer_norm2.bias"), eps=1e-5)
        m = act(h2 @ w(layer + "mlp.fc1.weight").T + w(layer + "mlp.fc1.bias"))
        x = x + m @ w(layer + "mlp.fc2.weight").T + w(layer + "mlp.fc2.bias")
    return torch.stack(out)                                                              # [layers, heads, T, T]
