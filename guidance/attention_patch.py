"""The cross-attention (attn2) replace installed on a layer — a stateless router shared by every feature of the pack.

ComfyUI calls an attn2 replace as ``out = fn(q, k, v, extra_options)`` with q ``[b, h·w, heads·d]`` and k, v
``[b, T, heads·d]`` already projected, and expects ``[b, h·w, heads·d]`` before ``to_out``. Only one replace may sit
on a layer, so the router holds no state of its own: at every call it asks the *run's* observers (capture, loss
stores, …) and editors whether they want this layer and call. They come from ``extra_options[PASS_KEY]``:
``{"session": Session}`` for a sampling run (placed there by the pack's OUTER_SAMPLE wrapper, see ``session.py``),
plus ``"grad_pass": True`` and per-pass ``"observers"`` inside the pack's gradient passes. If another pack already
held the layer, that pack's function (``inner``) still computes the output.

The output is computed by the host's own attention kernel (``attention_fn``) with the same arguments as the stock
``CrossAttention.forward``, so a patched layer returns bit-identical results; the probabilities observers see are
computed separately in float32. Exception: inside a gradient pass (grad enabled) a layer whose probabilities were
computed returns ``probs @ v`` so the graph runs through the very probabilities the loss reads.

Everything about the call comes from ``extra_options`` metadata (block, depth index, shapes, ``cond_or_uncond``),
never from counting calls. The router holds no run state; what it does hold — the replace it wraps and the terms
another pack added with IPAdapter's ``.add`` protocol — belongs to its model clone: ``ModelPatcher.clone()``
deep-copies it, so an ``.add`` on one clone's router never reaches another's.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    grad_pass: bool                     # True inside the pack's own gradient passes (graph kept)
    sampler_pass: bool = True           # an evaluation the sampler uses (fast mode's gradient pass is one)
    prompt_tokens: int | None = None    # tokens of the positive prompt's context (from the run), if known
    shuffled: bool = False              # another pack's pass with its image tokens permuted (TPG's "tpg")
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
    return LayerCall(block=(block[0], int(block[1])), depth=int(extra_options.get("block_index", 0)), size=size,
                     latent_size=(int(latent[-2]), int(latent[-1])), **pass_fields(extra_options))


def pass_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The :class:`LayerCall` fields every kind of layer reads from the pass's ``transformer_options``: batch chunk
    order, σ and schedule, which kind of pass it is, the run's prompt length, another pack's shuffled pass."""
    sigmas = options.get("sigmas")
    pass_opts = options.get(PASS_KEY) or {}
    session = pass_opts.get("session")
    return dict(cond_or_uncond=tuple(int(c) for c in options.get("cond_or_uncond", (0,))),
                sigma=first_value(sigmas) if sigmas is not None else None,
                sample_sigmas=options.get("sample_sigmas"),
                grad_pass=bool(pass_opts.get("grad_pass", False)),
                sampler_pass=bool(pass_opts.get("sampler_pass", not pass_opts.get("grad_pass", False))),
                prompt_tokens=getattr(getattr(session, "info", None), "context_tokens", None),
                shuffled=bool(options.get("tpg", False)), options=options)


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


#: what prompt-control's Attention Couple leaves in ``extra_options`` when it rewrote the batch of a layer call
COUPLE_KEY = "cond_or_uncond_hook_couple"


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


def run_parts(extra_options: dict[str, Any]) -> tuple[tuple[Observer, ...], tuple[Editor, ...]]:
    """The observers and editors of the current run and pass (see the module docstring)."""
    ctx = extra_options.get(PASS_KEY) or {}
    session = ctx.get("session")
    observers = tuple(ctx.get("observers", ()))
    editors = tuple(ctx.get("editors", ()))
    if session is not None:
        observers, editors = session.observers + observers, session.editors + editors
    return observers, editors


class CrossAttentionReplace:
    """The attn2 replace installed on a layer; see the module docstring. ``inner``: another pack's replace that held
    the layer before, which still computes the output."""

    is_attention_align_replace = True

    def __init__(self, attention_fn: Callable[..., torch.Tensor], inner: Callable[..., torch.Tensor] | None = None):
        self.attention_fn = attention_fn
        self.inner = inner
        self.added: tuple[tuple[Callable, dict], ...] = ()
        self.absorbed: tuple[object, ...] = ()   # other packs' replaces whose terms ``added`` carries

    def __eq__(self, other) -> bool:
        """Routers are equal when they route to the same things (a deep copy of a router equals it)."""
        return isinstance(other, CrossAttentionReplace) and (self.attention_fn, self.inner, self.added) == \
            (other.attention_fn, other.inner, other.added) and len(self.absorbed) == len(other.absorbed)

    __hash__ = None                      # compared by value, so not hashable

    # -- the protocol other packs use on a replace they find installed ---------------------------------------------
    def add(self, callback: Callable, **kwargs) -> None:
        """IPAdapter Plus's protocol: a pack that finds a replace on a layer calls ``.add(callback, **kwargs)`` on it
        (on its own clone's copy). The term ``callback(out, q, k, v, extra_options, **kwargs)`` is then added to the
        layer's output while ``sigma_end ≤ σ ≤ sigma_start``, as IPAdapter's own replace does; if this router wraps
        another pack's replace that speaks the protocol, the call goes to that one."""
        if self.inner is not None and hasattr(self.inner, "add"):
            self.inner.add(callback, **kwargs)
        else:
            self.added = self.added + ((callback, dict(kwargs)),)

    def to(self, device) -> CrossAttentionReplace:
        """ComfyUI moves replace patches with the model (``model_patches_to``); a wrapped replace moves too."""
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def _with_added(self, out: torch.Tensor, q, k, v, extra_options: dict[str, Any], call: LayerCall) -> torch.Tensor:
        sigma = call.sigma if call.sigma is not None else 999999999.9
        for callback, kwargs in self.added:
            if kwargs.get("sigma_end", 0.0) <= sigma <= kwargs.get("sigma_start", float("inf")):
                kw = {n: x.to(q.device) if isinstance(x, torch.Tensor) else x for n, x in kwargs.items()}
                out = out + callback(out, q, k, v, extra_options, **kw)
        return out.to(q.dtype)

    # -- the call ---------------------------------------------------------------------------------------------------
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        call = layer_call(q, extra_options)
        out = self._attention(q, k, v, extra_options, call)
        return self._with_added(out, q, k, v, extra_options, call) if self.added else out

    def _attention(self, q, k, v, extra_options: dict[str, Any], call: LayerCall) -> torch.Tensor:
        observers, editors = run_parts(extra_options)
        active = [] if call.shuffled else [o for o in observers if o.wants(call)]
        editing = [e for e in editors if e.wants(call)]
        if (active or editing) and COUPLE_KEY in extra_options:
            raise ValueError(
                "prompt-control's Attention Couple is active in this sampling run: it repeats the positive rows once "
                "per region and joins the regions' prompts into one context, so the positive prompt's own attention "
                "cannot be told apart there. Attention Align's capture and methods need the plain prompt: remove "
                "COUPLE from the prompt (or the couple node) for this model.")
        if editing:
            t = repeat_period(call, k.shape[1])
            return self._edited(q, k[:, :t], v[:, :t], call, extra_options["n_heads"], editing, active)
        probs = fold_repeats(attention_probs(q, k, extra_options["n_heads"]), call) if active else None
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
