"""One cross-attention (attn2) replace function per UNet layer, shared by every feature of the pack.

ComfyUI calls an attn2 replace as ``out = fn(q, k, v, extra_options)`` with q ``[b, h·w, heads·d]`` and k, v
``[b, T, heads·d]`` already projected, and expects ``[b, h·w, heads·d]`` before ``to_out``. Only one replace may sit
on a layer, so this object carries a tuple of *observers* (capture, loss stores, …) and, if another pack already
held the layer, that pack's function (``inner``), which still computes the output.

The output is computed by the host's own attention kernel (``attention_fn``) with the same arguments as the stock
``CrossAttention.forward``, so a patched layer returns bit-identical results; the probabilities observers see are
computed separately in float32. Exception: inside a gradient pass (grad enabled) a layer whose probabilities were
computed returns ``probs @ v`` so the graph runs through the very probabilities the loss reads.

Everything about the call comes from ``extra_options`` metadata (block, depth index, shapes, ``cond_or_uncond``),
never from counting calls. The object is immutable after construction and survives ``ModelPatcher.clone()``'s
deepcopy as itself: adding an observer builds a new object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import weakref

import torch

#: key in ``transformer_options`` under which a single UNet pass can carry extra, per-pass settings
PASS_KEY = "attention_align"


@dataclass(frozen=True)
class LayerCall:
    """Where and when one attn2 call happens, read from ComfyUI's ``extra_options``."""

    block: tuple[str, int]              # ("input", 7), ("middle", 0), ("output", 3)
    depth: int                          # index of the transformer block inside its SpatialTransformer
    size: tuple[int, int]               # (h, w) of this layer's attention maps
    latent_size: tuple[int, int]        # (H, W) of the UNet's input latent
    cond_or_uncond: tuple[int, ...]     # chunk order of the batch: 0 = positive, 1 = negative
    sigma: float | None                 # current σ of the (first) row
    sample_sigmas: torch.Tensor | None  # the whole schedule of the running sampler, if known
    grad_pass: bool                     # True inside the pack's own gradient passes
    options: dict | None = field(default=None, compare=False, repr=False)   # extra_options, for the kernel

    @property
    def key(self) -> tuple[str, int, int]:
        """The replace key ComfyUI looks up: ``(block name, block number, depth index)``."""
        return (self.block[0], self.block[1], self.depth)


class Observer(Protocol):
    def wants(self, call: LayerCall) -> bool: ...

    def observe(self, probs: torch.Tensor, call: LayerCall) -> None: ...


class Editor(Protocol):
    """Changes the attention itself: the scores before the softmax and/or the probabilities after it.

    An editor may instead (or also) offer ``bias(q, k, heads, call) → [b, heads, n, T]``, an additive mask: if every
    active editor is such a bias, the layer still runs the host's attention kernel (with that mask), at no extra
    cost beyond computing the bias.
    """

    def wants(self, call: LayerCall) -> bool: ...

    def edit_scores(self, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """scores ``[b, heads, n, T]`` (float32, ``q kᵀ/√d``) → edited scores; must not modify its input."""

    def edit_probs(self, probs: torch.Tensor, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """probs after the softmax of the edited scores; ``scores`` are the unedited ones."""


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


#: ``float(t[0])`` once per tensor: every layer of one UNet call shares the same ``sigmas`` tensor, and on a GPU
#: each read is a device synchronisation
first_value = PerTensor(lambda t: float(t.reshape(-1)[0]))


def layer_call(q: torch.Tensor, extra_options: dict[str, Any]) -> LayerCall:
    """Build a :class:`LayerCall` from ``extra_options``; raises if the metadata is missing or inconsistent."""
    n = q.shape[1]
    block = extra_options.get("block")
    if block is None:
        raise RuntimeError("attn2 replace called without 'block' in extra_options; not a ComfyUI UNet call")
    latent = extra_options["original_shape"]
    act = extra_options.get("activations_shape")
    if act is not None:
        size = (int(act[-2]), int(act[-1]))
    else:
        size = _size_from_tokens(n, int(latent[-2]), int(latent[-1]))
    if size[0] * size[1] != n:
        raise RuntimeError(f"attn2 layer {block}: {n} queries do not tile a {size[0]}×{size[1]} map")
    sigmas = extra_options.get("sigmas")
    pass_opts = extra_options.get(PASS_KEY) or {}
    return LayerCall(
        block=(block[0], int(block[1])),
        depth=int(extra_options.get("block_index", 0)),
        size=size,
        latent_size=(int(latent[-2]), int(latent[-1])),
        cond_or_uncond=tuple(int(c) for c in extra_options.get("cond_or_uncond", (0,))),
        sigma=first_value(sigmas) if sigmas is not None else None,
        sample_sigmas=extra_options.get("sample_sigmas"),
        grad_pass=bool(pass_opts.get("grad_pass", False)),
        options=extra_options,
    )


def _size_from_tokens(n: int, lat_h: int, lat_w: int) -> tuple[int, int]:
    """Map size for n queries when ``activations_shape`` is absent: halve (rounding up, as a stride-2 conv with
    padding 1 does) until the product matches."""
    h, w = lat_h, lat_w
    while h * w > n and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


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


class CrossAttentionReplace:
    """The attn2 replace installed on a layer; see the module docstring."""

    is_attention_align_replace = True

    def __init__(self, attention_fn: Callable[..., torch.Tensor], observers: tuple[Observer, ...] = (),
                 inner: Callable[..., torch.Tensor] | None = None, editors: tuple[Editor, ...] = ()):
        self.attention_fn = attention_fn
        self.observers = tuple(observers)
        self.inner = inner
        self.editors = tuple(editors)

    def __deepcopy__(self, memo: dict) -> "CrossAttentionReplace":
        return self  # immutable; ModelPatcher.clone() must not split observer state

    def with_observer(self, observer: Observer) -> "CrossAttentionReplace":
        return CrossAttentionReplace(self.attention_fn, self.observers + (observer,), self.inner, self.editors)

    def with_editor(self, editor: Editor) -> "CrossAttentionReplace":
        return CrossAttentionReplace(self.attention_fn, self.observers, self.inner, self.editors + (editor,))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        call = layer_call(q, extra_options)
        pass_observers = (extra_options.get(PASS_KEY) or {}).get("observers", ())
        active = [o for o in (*self.observers, *pass_observers) if o.wants(call)]
        editing = [e for e in self.editors if e.wants(call)]
        if editing:
            return self._edited(q, k, v, call, extra_options["n_heads"], editing, active)
        probs = attention_probs(q, k, extra_options["n_heads"]) if active else None
        for observer in active:
            observer.observe(probs, call)
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        if probs is not None and torch.is_grad_enabled() and call.grad_pass:
            return probs_times_v(probs, v)
        return self.attention_fn(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                 transformer_options=extra_options)

    def _edited(self, q, k, v, call: LayerCall, heads: int, editors: list, observers: list[Observer]):
        """The layer's attention with the editors applied: observers see, and the output uses, the edited probs."""
        if self.inner is not None:
            raise RuntimeError(f"attn2 layer {call.key} is replaced by another node pack's attention patch; "
                               "Attention Align cannot edit its attention as well")
        biases = [e.bias(q, k, heads, call) for e in editors if hasattr(e, "bias")]
        bias = sum(biases[1:], biases[0]) if biases else None
        score_editors = [e for e in editors if hasattr(e, "edit_scores")]
        if not score_editors:
            probs = None
            if observers or (call.grad_pass and torch.is_grad_enabled()):
                probs = (attention_scores(q, k, heads) + bias).softmax(dim=-1)
                for observer in observers:
                    observer.observe(probs, call)
            if probs is not None and call.grad_pass and torch.is_grad_enabled():
                return probs_times_v(probs, v)
            return self.attention_fn(q, k, v, heads, mask=bias.to(q.dtype), attn_precision=call_precision(call),
                                     transformer_options=call_options(call))
        scores = attention_scores(q, k, heads)
        edited = scores if bias is None else scores + bias
        for editor in score_editors:
            edited = editor.edit_scores(edited, call)
        probs = edited.softmax(dim=-1)
        for editor in score_editors:
            probs = editor.edit_probs(probs, scores, call)
        for observer in observers:
            observer.observe(probs, call)
        return probs_times_v(probs, v)


def call_options(call: LayerCall) -> dict:
    return call.options if call.options is not None else {}


def call_precision(call: LayerCall):
    return call_options(call).get("attn_precision")


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
