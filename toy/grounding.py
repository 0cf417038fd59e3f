"""What toy model v2's training adds to plain denoising: cross-attention maps grounded on the objects, padding that
carries nothing, and a text encoder that is pretrained and then frozen.

Pure torch (no ComfyUI import); the one host-facing piece, :func:`capture_cross_attention_`, replaces the forward of
the UNet's ``attn2`` modules *on the instance being trained* (the class and every other instance are untouched), so
that the attention probabilities exist as tensors with a gradient.

Shapes: B batch, H heads, N = h·w image positions of a map (row-major), T = 77 text positions, K target slots per
sample (its nouns, and in a one-object scene its colour word; an unused slot has position −1).

* Grounding (TokenCompose, Wang et al., CVPR 2024, eqs. 1–2 of its §3.2, as its ``train/src/loss_utils.py``
  computes them): :func:`token_loss` and :func:`pixel_loss`.
* The padding route (Padding Tone, NAACL 2025: a text encoder trained with the UNet puts the caption into the
  padding tokens, which ComfyUI's *CLIP Text Encode* always passes, 77 of them, unmasked): :func:`swap_tails`.
* Text pretraining: :func:`encode_prefix` (the first L positions of ComfyUI's causal CLIP, exactly), and
  :func:`swap_colours` (the binding negatives of the contrastive loss).
"""
from __future__ import annotations

import re
import types

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------- capture


def capture_cross_attention_(unet) -> list[torch.Tensor]:
    """Make every ``attn2`` (cross-attention) module of ``unet`` compute its softmax explicitly and append the
    probabilities ``[B, H, N, T]`` to the returned list, in call order (clear it before each forward). The output
    is the same attention (``softmax(q kᵀ / √d) v``), computed without a fused kernel so that the probabilities
    carry a gradient. Instance attributes only: the class and other UNets are untouched."""
    store: list[torch.Tensor] = []

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 (host's signature)
        if mask is not None:
            raise ValueError("the grounding capture takes no attention mask; ComfyUI's SD1 path passes none")
        q, k = self.to_q(x), self.to_k(context)
        v = self.to_v(context if value is None else value)
        b, n, _ = q.shape
        h = self.heads
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)          # [B, H, N, T]
        store.append(probs)
        return self.to_out((probs @ v).transpose(1, 2).reshape(b, n, -1))

    found = 0
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.forward = types.MethodType(forward, module)
            found += 1
    if not found:
        raise ValueError("unet has no attn2 (cross-attention) modules to capture")
    return store


# --------------------------------------------------------------------------------------------------- grounding
def _token_maps(probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Head-averaged maps of the target tokens: ``probs`` ``[B, H, N, T]``, ``positions`` ``[B, K]`` (−1: none) →
    ``[B, K, N]`` (an unused slot reads position 0; callers mask it out)."""
    a = probs.mean(dim=1)                                                               # [B, N, T]
    idx = positions.clamp_min(0)[:, None, :].expand(-1, a.shape[1], -1)                 # [B, N, K]
    return a.gather(2, idx).transpose(1, 2)                                             # [B, K, N]


def _masks_for(masks: dict[int, torch.Tensor], n: int) -> torch.Tensor:
    side = round(n ** 0.5)
    if side * side != n or side not in masks:
        raise ValueError(f"no target masks for a {n}-position map; masks are given for sides {sorted(masks)}")
    m = masks[side]
    return m.reshape(m.shape[0], m.shape[1], n)                                         # [B, K, N]


def token_loss(probs: list[torch.Tensor], positions: torch.Tensor, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """TokenCompose's token loss (its eq. 1): for each layer's head-averaged map ``A`` of a target token and the
    token's object mask ``M``, ``(1 − Σ_u A_u M_u / Σ_u A_u)²`` — the share of the token's attention that falls
    outside its object, squared. A ratio, so indifferent to how much of a pixel's attention goes to the start token
    or the padding. Mean over layers and over the targets present (TokenCompose averages its batch inside the
    square; here each sample has its own scene, so the square is per sample).

    ``probs``: per layer ``[B, H, N, T]``; ``positions``: ``[B, K]`` token positions (−1: no target);
    ``masks``: map side → ``[B, K, side, side]`` in [0, 1]."""
    valid = (positions >= 0).float()                                                    # [B, K]
    if valid.sum() == 0:
        return probs[0].new_zeros(())
    losses = []
    for p in probs:
        a = _token_maps(p, positions)                                                   # [B, K, N]
        m = _masks_for(masks, a.shape[-1]).to(a.dtype)
        inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-12)                           # [B, K]
        losses.append(((1.0 - inside) ** 2 * valid).sum() / valid.sum())
    return torch.stack(losses).mean()


def pixel_loss(probs: list[torch.Tensor], positions: torch.Tensor, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """TokenCompose's pixel loss (its eq. 2): binary cross-entropy between the target token's map — its attention
    probability at each pixel, averaged over heads and over the layers of one map size — and the object mask, so
    that the pixels of an object attend to its word and other pixels do not. Mean over pixels and over the targets
    present, then over map sizes. Shapes as in :func:`token_loss`."""
    valid = (positions >= 0).float()
    if valid.sum() == 0:
        return probs[0].new_zeros(())
    by_size: dict[int, list[torch.Tensor]] = {}
    for p in probs:
        by_size.setdefault(p.shape[2], []).append(_token_maps(p, positions))
    losses = []
    for n, maps in sorted(by_size.items()):
        a = torch.stack(maps).mean(0).clamp(1e-6, 1 - 1e-6)                            # [B, K, N]
        m = _masks_for(masks, n).to(a.dtype)
        bce = F.binary_cross_entropy(a, m, reduction="none").mean(-1)                   # [B, K]
        losses.append((bce * valid).sum() / valid.sum())
    return torch.stack(losses).mean()


def area_masks(coverage: torch.Tensor, side: int) -> torch.Tensor:
    """Object masks at a map's size: ``coverage`` ``[..., S, S]`` (share of each image pixel the object covers) →
    ``[..., side, side]``, the share of each map cell the object covers (S a multiple of ``side``)."""
    s = coverage.shape[-1]
    if s % side:
        raise ValueError(f"image side {s} is not a multiple of the map side {side}")
    f = s // side
    return coverage.reshape(*coverage.shape[:-2], side, f, side, f).mean(dim=(-3, -1))


# ------------------------------------------------------------------------------------------------------ padding
def swap_tails(context: torch.Tensor, ends: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Each caption's tail — its end token and the padding after it — replaced by another caption's tail, aligned at
    the end token: row ``i`` takes, at position ``p ≥ ends[i]``, row ``perm[i]``'s position
    ``min(ends[perm[i]] + p − ends[i], T − 1)``. Start and word positions are kept.

    With every tail swapped in training, nothing after a caption's words says what its image holds, so the UNet must
    read the words; at inference ComfyUI's 77-token encoding (a caption's own tail) is a tail like any other.
    ``context`` ``[B, T, C]``, ``ends`` ``[B]`` (position of each caption's end token), ``perm`` ``[B]`` → ``[B, T, C]``."""
    b, t, c = context.shape
    pos = torch.arange(t, device=context.device)[None, :]                               # [1, T]
    e_i, e_j = ends[:, None], ends[perm][:, None]
    src = torch.where(pos >= e_i, (e_j + pos - e_i).clamp(max=t - 1), pos)              # [B, T]
    row = torch.where(pos >= e_i, perm[:, None], torch.arange(b, device=context.device)[:, None])
    return context[row, src]


# ----------------------------------------------------------------------------------------------- text encoder
def encode_prefix(text_model, ids: torch.Tensor) -> torch.Tensor:
    """The final-layer-normed hidden states of ComfyUI's ``CLIPTextModel_`` for the first ``L`` positions of a
    caption, ``ids`` ``[B, L]`` → ``[B, L, C]``. Because the encoder is causal and its position embeddings
    absolute, these equal the first ``L`` rows of the full 77-position encoding (what *CLIP Text Encode* gives the
    UNet); a short prefix makes contrastive pretraining several times cheaper."""
    length = ids.shape[1]
    emb = text_model.embeddings
    x = emb.token_embedding(ids) + emb.position_embedding.weight[:length]
    causal = torch.full((length, length), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
    x, _ = text_model.encoder(x, mask=causal)
    return text_model.final_layer_norm(x)


_ARTICLE = re.compile(r"\b(a|an) (\w)")


def swap_colours(caption: str, colours) -> str | None:
    """``caption`` with its first two different colour words exchanged and its articles agreed again ("an orange
    heart and a red star" → "a red heart and an orange star"): the same words, bound the other way. None when the
    caption names fewer than two different colours."""
    words = caption.split(" ")
    found = [(i, w.rstrip(",")) for i, w in enumerate(words) if w.rstrip(",") in colours]
    first = found[0] if found else None
    second = next(((i, c) for i, c in found if first and c != first[1]), None)
    if second is None:
        return None
    (i, a), (j, b) = first, second
    words[i] = words[i].replace(a, b)
    words[j] = words[j].replace(b, a)
    return _ARTICLE.sub(lambda m: ("an" if m[2] in "aeiou" else "a") + " " + m[2], " ".join(words))
