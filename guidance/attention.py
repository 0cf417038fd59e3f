"""What every attention feature of the pack sees of one attention call, and the one pipeline that edits it.

The host (``nodes/host/``) routes each attention call of a UNet's cross-attention layer (attn2) or of a DiT's
joint-attention block to the run's *observers* (capture, the loss's map store) and *edits* (Attention Regulation,
Attention Modulation, the joint temperature). Both see the call through one object, :class:`LayerCall`, and the
probabilities as ``[b, heads, n, T]`` over the text tokens, whichever kind of model it is.

An edit is an :class:`AttentionEdit`: every hook is declared there with a no-op default, and an edit overrides the
ones it uses and says so in two flags (:attr:`~AttentionEdit.adds_bias`, :attr:`~AttentionEdit.edits_scores`), which
tell the host whether the call can stay on the host's own attention kernel. Every edited call, UNet or DiT, goes
through :func:`edited_probs`::

    S_text = S[..., text] · text_scale + Σ_e e.bias(q, k_text)          (edits with adds_bias)
    S_text = e.edit_scores(S_text)                                       (each edit in turn)
    S_img  = S[..., image] · Π_e e.image_scale(call)                     (a DiT's image keys; a UNet has none)
    P      = e.edit_probs(softmax([S_text, S_img, rest]), S₀)            (S₀: the scores before any edit)

Pure torch: no host import.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

#: one attention layer of the model: (block name, block number, depth index), e.g. ("input", 7, 0) for a UNet's
#: attn2 layer (ComfyUI's replace key) or ("double", 3, 0) / ("single", 12, 0) for a DiT's joint-attention block
LayerKey = tuple[str, int, int]


@dataclass(frozen=True)
class LayerCall:
    """Where and when one attention call happens (built by the host from ComfyUI's per-call options)."""

    block: tuple[str, int]              # ("input", 7), ("middle", 0), ("output", 3); a DiT's ("double", 3)
    depth: int                          # index of the transformer block inside its SpatialTransformer (DiT: 0)
    size: tuple[int, int]               # (h, w) of this layer's attention maps
    latent_size: tuple[int, int]        # (H, W) of the model's input latent
    cond_or_uncond: tuple[int, ...]     # chunk order of the batch: 0 = positive, 1 = negative
    sigma: float | None                 # current σ of the (first) row
    sample_sigmas: torch.Tensor | None  # the whole schedule of the running sampler, if known
    grad_pass: bool                     # True inside the pack's own gradient passes (graph kept)
    sampler_pass: bool = True           # an evaluation the sampler uses (fast mode's gradient pass is one)
    prompt_tokens: int | None = None    # tokens of the positive prompt's context (from the run), if known
    shuffled: bool = False              # another pack's pass with its image tokens permuted (TPG's "tpg")
    options: dict | None = field(default=None, compare=False, repr=False)   # the host's options, for its kernel

    @property
    def key(self) -> LayerKey:
        """The layer's key: ``(block name, block number, depth index)``."""
        return (self.block[0], self.block[1], self.depth)


class Observer(Protocol):
    """Sees the positive prompt's attention probabilities of the calls it wants (capture, a loss's map store)."""

    def wants(self, call: LayerCall) -> bool: ...

    def observe(self, probs: torch.Tensor, call: LayerCall) -> None:
        """probs ``[b, heads, n, T]`` (float32; every row sums to 1 over the T text tokens)."""


class AttentionEdit:
    """The edit of one sampling run (see the module docstring); every hook's default changes nothing.

    A subclass overrides the hooks it uses and declares them: ``adds_bias`` (it overrides :meth:`bias`: an additive
    logit bias, which a UNet layer applies through the host's kernel as a mask, at no extra cost) and
    ``edits_scores`` (it overrides :meth:`edit_scores` / :meth:`edit_probs`: the layer computes the probabilities
    explicitly). ``text_scale`` and ``image_scale`` need no flag: a factor of 1 is no edit.
    """

    name: str = "attention edit"
    min_map_side: int = 1               # the smallest map side the edit works on (a check before sampling)
    adds_bias: bool = False
    edits_scores: bool = False

    def wants(self, call: LayerCall) -> bool:
        """Whether the edit changes this call's image→text logits (or probabilities)."""
        return True

    def wants_block(self, call: LayerCall) -> bool:
        """On a DiT block: whether the edit changes anything of its joint attention (also the image→image part,
        :meth:`image_scale`). Defaults to :meth:`wants`."""
        return self.wants(call)

    def text_scale(self, call: LayerCall) -> float:
        """A factor on this DiT block call's image→text logits (1: none)."""
        return 1.0

    def image_scale(self, call: LayerCall) -> float:
        """A factor on this DiT block call's image→image logits (1: none)."""
        return 1.0

    def bias(self, q: torch.Tensor, k: torch.Tensor, heads: int, call: LayerCall) -> torch.Tensor:
        """An additive bias on the logits (only called when ``adds_bias``): q ``[b, n, heads·d]``, the text keys k
        ``[b, T, heads·d]`` → ``[b, heads, n, T]``."""
        raise NotImplementedError(f"{type(self).__name__} declares adds_bias but has no bias()")

    def edit_scores(self, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """scores ``[b, heads, n, T]`` (float32, ``q kᵀ/√d`` after the biases) → edited scores; never in place."""
        return scores

    def edit_probs(self, probs: torch.Tensor, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """probs after the softmax of the edited scores → edited probs; ``scores`` are the unedited ones. On a DiT
        both span the text and image keys (text first)."""
        return probs

    def step_losses(self) -> dict[int, list[tuple[float, float]]]:
        """The edit's own loss per step, ``step → [(before, after) per layer call]`` (Attention Regulation's
        optimisation; empty for an edit without a loss). The run's log records them."""
        return {}


class EditMethod(Protocol):
    """What an edit node hands on (its frozen settings): :meth:`for_run` makes the :class:`AttentionEdit` of one
    sampling run, bound to the layers it was attached to."""

    name: str
    min_map_side: int
    dit_only: bool                      # an edit of DiT joint attention only (refused on a UNet)

    def for_run(self, layers: Collection[LayerKey] | None = None) -> AttentionEdit: ...


def edited_probs(scores: torch.Tensor, edits, call: LayerCall, *, q: torch.Tensor, k_text: torch.Tensor, heads: int,
                 text: int | None = None, text_scale: float = 1.0, image_tokens: int = 0,
                 image_scale: float = 1.0) -> torch.Tensor:
    """The one edit pipeline (module docstring), for a UNet layer and a DiT block alike.

    scores: ``[b, heads, n, L]`` in at least float32 (with the call's mask added), the text keys first: the first
    ``text`` columns (None: all of them, a UNet's cross-attention); ``edits``: the edits that want this call;
    q ``[b, n, heads·d]`` and k_text ``[b, T, heads·d]`` for their biases; ``image_tokens``: the image keys of a DiT's
    joint attention (right after the text), whose logits are multiplied by ``image_scale``. Returns the probabilities ``[b, heads, n, L]``.
    """
    t = scores.shape[-1] if text is None else text
    text_part = scores[..., :t] * text_scale if text_scale != 1.0 else scores[..., :t]
    for edit in edits:
        if edit.adds_bias:
            text_part = text_part + edit.bias(q, k_text, heads, call).to(scores.dtype)
    for edit in edits:
        text_part = edit.edit_scores(text_part, call)
    parts = [text_part]
    if t < scores.shape[-1]:
        rest = scores[..., t:]
        if image_scale != 1.0:
            rest = torch.cat([rest[..., :image_tokens] * image_scale, rest[..., image_tokens:]], dim=-1)
        parts.append(rest)
    probs = (torch.cat(parts, dim=-1) if len(parts) > 1 else text_part).softmax(dim=-1)
    for edit in edits:
        probs = edit.edit_probs(probs, scores, call)
    return probs


def image_scale_of(edits, call: LayerCall) -> float:
    """The product of the edits' :meth:`~AttentionEdit.image_scale` for a DiT block call."""
    return math.prod(edit.image_scale(call) for edit in edits)


# -- attention from projected q and k ---------------------------------------------------------------------------------
def attention_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``q kᵀ / √d`` in at least float32: q ``[b, n, heads·d]``, k ``[b, T, heads·d]`` → ``[b, heads, n, T]``."""
    b, n, inner = q.shape
    d = inner // heads
    dtype = torch.promote_types(q.dtype, torch.float32)          # fp16/bf16 → fp32; fp64 stays fp64
    qh = q.to(dtype).view(b, n, heads, d).transpose(1, 2)         # [b, heads, n, d]
    kh = k.to(dtype).view(b, -1, heads, d).transpose(1, 2)        # [b, heads, T, d]
    return qh @ kh.transpose(-1, -2) * d ** -0.5


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q kᵀ / √d)`` in at least float32 → ``[b, heads, n, T]``."""
    return attention_scores(q, k, heads).softmax(dim=-1)


def probs_times_v(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probs @ v`` back in the layer's layout: probs ``[b, heads, n, T]``, v ``[b, T, heads·d]`` → ``[b, n, heads·d]``."""
    b, heads, n, _ = probs.shape
    d = v.shape[-1] // heads
    vh = v.view(b, -1, heads, d).transpose(1, 2)                  # [b, heads, T, d]
    return (probs.to(vh.dtype) @ vh).transpose(1, 2).reshape(b, n, heads * d)


# -- the positive prompt's part of a call -----------------------------------------------------------------------------
def repeat_period(call: LayerCall, tokens: int) -> int:
    """The positive prompt's token count when a context of ``tokens`` is that prompt repeated (ComfyUI pads the
    conditionings of one batch to the least common multiple of their lengths by repeating them, e.g. a 77-token
    prompt beside a 154-token negative); else ``tokens``."""
    t = call.prompt_tokens
    return t if t and tokens > t and tokens % t == 0 else tokens


def fold_repeats(probs: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """``[..., T_k]`` → ``[..., T]``: a repeated context's probabilities summed over its copies. Repeated keys have
    equal scores, so the sum is exactly the softmax over the unrepeated prompt."""
    t = repeat_period(call, probs.shape[-1])
    return probs if t == probs.shape[-1] else probs.unflatten(-1, (probs.shape[-1] // t, t)).sum(dim=-2)


def positive_index(call: LayerCall, rows: int, device=None) -> slice | torch.Tensor:
    """The positive prompt's rows (all positive chunks) among ``rows`` rows: a slice when they are contiguous (one
    positive chunk, the usual case: no index tensor, no host-to-device copy), else an index tensor."""
    per = rows // len(call.cond_or_uncond)
    chunks = [j for j, c in enumerate(call.cond_or_uncond) if c == 0]
    if chunks == list(range(chunks[0], chunks[-1] + 1)):
        return slice(chunks[0] * per, (chunks[-1] + 1) * per)
    return torch.tensor([j * per + r for j in chunks for r in range(per)], dtype=torch.long, device=device)


def positive_rows(probs: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """The rows of the positive prompt: probs ``[b, heads, n, T]`` → ``[B, heads, n, T]`` with B = b / chunks.

    ``cond_or_uncond`` gives the chunk order (``[1, 0]`` = uncond first, as ComfyUI usually batches); if several
    positive chunks share the call (combined conditionings), their maps are averaged.
    """
    chunks = len(call.cond_or_uncond)
    per = probs.shape[0] // chunks
    pos = [j for j, c in enumerate(call.cond_or_uncond) if c == 0]
    if not pos:
        raise ValueError(f"layer {call.key}: no positive chunk in cond_or_uncond={call.cond_or_uncond}")
    parts = [probs[j * per:(j + 1) * per] for j in pos]
    return parts[0] if len(parts) == 1 else torch.stack(parts).mean(0)


class PerTensor:
    """A value computed once per tensor *object* and dropped with it (weak references, compared by identity;
    ``WeakKeyDictionary`` cannot hold tensors, whose ``==`` is element-wise)."""

    def __init__(self, compute: Callable[[torch.Tensor], Any]):
        self.compute, self.values = compute, {}

    def __call__(self, t: torch.Tensor):
        entry = self.values.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        value = self.compute(t)
        key = id(t)
        self.values[key] = (weakref.ref(t, lambda _, key=key: self.values.pop(key, None)), value)
        return value


#: ``float(t[0])`` once per tensor: every layer of one model call shares the same ``sigmas`` tensor, and on a GPU
#: each read is a device synchronisation
first_value = PerTensor(lambda t: float(t.reshape(-1)[0]))
