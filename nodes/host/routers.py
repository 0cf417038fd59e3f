"""The routers the pack installs on a model clone: the stateless patches through which every attention call reaches
the run's observers and edits. ComfyUI-facing, but without ComfyUI imports (everything comes in the call's options).

* **UNet cross-attention** (attn2): :class:`CrossAttentionReplace`, called by ComfyUI as ``out = fn(q, k, v,
  extra_options)`` with q ``[b, h·w, heads·d]`` and k, v ``[b, T, heads·d]`` already projected, returning
  ``[b, h·w, heads·d]`` before ``to_out``. The output is computed by the host's own attention kernel
  (``attention_fn``) with the same arguments as the stock ``CrossAttention.forward``, so a patched layer returns
  bit-identical results; the probabilities observers see are computed separately in float32. Exception: inside a
  gradient pass (grad enabled) a layer whose probabilities were computed returns ``probs @ v`` so the graph runs
  through the very probabilities the loss reads.
* **DiT joint-attention blocks** (Flux, SD3/SD3.5): :class:`JointBlockRouter`, a block replace called as
  ``replace(args, {"original_block": fn})``. When the run's observers want the block, or an edit changes its
  attention, it hands the block a copy of ``transformer_options`` carrying a :class:`JointAttentionTap` as
  ``optimized_attention_override`` (chained to any override already there), then runs the original block (or another
  pack's replace it took over). The tap sees the block's q and k exactly as the kernel does; the kernel still
  computes the output (twice, for a temperature on the image→text logits; for the text rows only, with an edit that
  computes the image rows explicitly), so capture changes nothing. :class:`JointGeometry` (an ``APPLY_MODEL``
  wrapper) writes where the text and image tokens sit into each model call's options.
* **UNet self-attention** (attn1): :class:`SelfAttentionTemperature`, Attention Modulation's temperature.

Only one replace may sit on a layer, so a router holds no run state: at every call it asks the *run's* observers
and edits whether they want this call (``run_parts``: the run context under ``transformer_options[PASS_KEY]``, see
``context.py``, plus per-pass observers inside the pack's gradient passes). Edits go through the one pipeline,
:func:`~...guidance.attention.edited_probs`. Everything about a call comes from its options (block, depth index,
shapes, ``cond_or_uncond``), never from counting calls. What a router does hold — the replace it wraps and the terms
another pack added with IPAdapter's ``.add`` protocol — belongs to its model clone: ``ModelPatcher.clone()``
deep-copies it, so an ``.add`` on one clone's router never reaches another's.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...guidance.attention import (
    AttentionEdit,
    LayerCall,
    Observer,
    attention_probs,
    attention_scores,
    edited_probs,
    first_value,
    fold_repeats,
    image_scale_of,
    probs_times_v,
    repeat_period,
)
from ...guidance.joint_attention import JointLayout, heads_layout, image_text_probs, mask_rows, scaled_text_keys
from ...guidance.modulation import ModulationSettings, phase
from .context import PASS_KEY


# -- one call, read from ComfyUI's options --------------------------------------------------------------------------
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
                prompt_tokens=session.info.context_tokens if session is not None else None,
                shuffled=bool(options.get("tpg", False)), options=options)


def _size_from_tokens(n: int, lat_h: int, lat_w: int) -> tuple[int, int]:
    """Map size for n queries when ``activations_shape`` is absent: halve (rounding up, as a stride-2 conv with
    padding 1 does) until the product matches."""
    h, w = lat_h, lat_w
    while h * w > n and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


#: what prompt-control's Attention Couple leaves in ``extra_options`` when it rewrote the batch of a layer call
COUPLE_KEY = "cond_or_uncond_hook_couple"


def run_parts(extra_options: dict[str, Any]) -> tuple[tuple[Observer, ...], tuple[AttentionEdit, ...]]:
    """The observers and edits of the current run and pass (see the module docstring)."""
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

    def _edited(self, q, k, v, call: LayerCall, heads: int, edits: list[AttentionEdit], observers: list[Observer]):
        """The layer's attention with the edits applied (:func:`~...guidance.attention.edited_probs`): observers see,
        and the output uses, the edited probabilities. Edits that only add a bias leave the output to the host's
        kernel, with the bias as its additive mask (unless the gradient pass needs the probabilities themselves)."""
        if self.inner is not None:
            raise RuntimeError(f"attn2 layer {call.key} is replaced by another node pack's attention patch; "
                               "Attention Align cannot edit its attention as well")
        explicit = any(e.edits_scores for e in edits) or (call.grad_pass and torch.is_grad_enabled())
        if explicit or observers:
            probs = edited_probs(attention_scores(q, k, heads), edits, call, q=q, k_text=k, heads=heads)
            for observer in observers:
                observer.observe(probs, call)
            if explicit:
                return probs_times_v(probs, v)
        biases = [e.bias(q, k, heads, call) for e in edits if e.adds_bias]
        mask = sum(biases[1:], biases[0]).to(q.dtype) if biases else None
        return self.attention_fn(q, k, v, heads, mask=mask, attn_precision=call_precision(call),
                                 transformer_options=call_options(call))


def call_options(call: LayerCall) -> dict:
    return call.options if call.options is not None else {}


def call_precision(call: LayerCall):
    return call_options(call).get("attn_precision")


# -- DiT joint-attention blocks -------------------------------------------------------------------------------------
#: ``transformer_options`` key of the per-call token layout (set by :class:`JointGeometry`)
GEOMETRY_KEY = "attention_align_joint"


class JointGeometry:
    """The ``APPLY_MODEL`` wrapper: adds this call's :class:`JointLayout` and latent size to a copy of its
    ``transformer_options`` (args as ``BaseModel.apply_model`` passes them)."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        options = dict(transformer_options or {})
        if c_crossattn is not None:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            p = self.patch_size
            options[GEOMETRY_KEY] = (JointLayout(int(c_crossattn.shape[1]), (-(-h // p), -(-w // p))), (h, w))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def joint_call(block: tuple[str, int], options: dict) -> tuple[LayerCall, JointLayout]:
    """The :class:`LayerCall` of one block call (what observers decide on), and its token layout."""
    geometry = options.get(GEOMETRY_KEY)
    if geometry is None:
        raise RuntimeError(f"DiT block {block}: the call carries no token layout; the model's APPLY_MODEL wrapper "
                           "from Attention Align did not run")
    layout, latent = geometry
    call = LayerCall(block=block, depth=0, size=layout.grid, latent_size=latent, **pass_fields(options))
    return call, layout


class JointBlockRouter:
    """The block replace on one DiT block (see the module docstring). ``inner``: another pack's replace that held
    the block before, which still runs it."""

    is_attention_align_replace = True

    def __init__(self, block: tuple[str, int], inner=None):
        self.block, self.inner = block, inner

    def __eq__(self, other) -> bool:
        return isinstance(other, JointBlockRouter) and (self.block, self.inner) == (other.block, other.inner)

    __hash__ = None

    def to(self, device) -> JointBlockRouter:
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        observers, editors = run_parts(options)
        if observers or editors:
            call, layout = joint_call(self.block, options)
            active = [o for o in observers if o.wants(call)]
            wanting = [e for e in editors if e.wants_block(call)]
            scale = math.prod(e.text_scale(call) for e in wanting)
            # a temperature alone stays on the kernel (keys scaled); a bias or a score edit computes the image rows
            explicit = [e for e in wanting if e.adds_bias or e.edits_scores or e.image_scale(call) != 1.0]
            if active or scale != 1.0 or explicit:
                def observe(probs):
                    probs = fold_repeats(probs, call)
                    for observer in active:
                        observer.observe(probs, call)
                options = dict(options)
                options["optimized_attention_override"] = JointAttentionTap(
                    layout, observe if active else None, previous=options.get("optimized_attention_override"),
                    text_scale=scale, editors=explicit, call=call)
                args = {**args, "transformer_options": options}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


class JointAttentionTap:
    """ComfyUI's ``optimized_attention_override`` for one block call: ``tap(func, q, k, v, heads, **kwargs)``.

    ``observe(probs)`` receives ``P`` ``[b, heads, n_img, T]`` for the block's joint call — the call whose keys span
    text and image — once: a block's other attention (SD3.5-medium's image-only self-attention) passes untouched, and
    so does a re-run of the joint call (activation checkpointing recomputing the block during a backward pass).
    ``previous``: the override that was in the options before (another pack's), which then computes the output, as
    the host's kernel ``func`` does otherwise. ``text_scale`` ≠ 1 edits the joint call: its image→text logits are
    multiplied by it (``joint_temperature.py``); observers then see the edited ``P``. ``editors`` (with ``call``,
    the block call's :class:`~...guidance.attention.LayerCall`) edit the image rows explicitly (:meth:`_edited`).
    ``observe`` may be None (an edit alone). Holds no state beyond the one call it was made for.
    """

    def __init__(self, layout: JointLayout, observe, previous=None, *, text_scale: float = 1.0, editors=(),
                 call=None):
        self.layout, self.observe, self.previous = layout, observe, previous
        self.text_scale = float(text_scale)         # an edit's factor on the image→text logits (1: none)
        self.editors, self.call = tuple(editors), call   # explicit edits of the image rows (see _edited), their call
        self.observed = False

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        skip = bool(kwargs.get("skip_reshape", False))
        length = q.shape[-2] if skip else q.shape[1]
        joint = length >= self.layout.minimum_length and (k.shape[-2] if skip else k.shape[1]) == length
        if joint and self.editors:
            return self._edited(func, args, kwargs, heads, length, skip)
        if joint and self.observe is not None:
            # a re-run (checkpointing's recompute in a backward pass) repeats the same operations, as it must, but
            # is not observed again
            probs = image_text_probs(heads_layout(q, heads, skip), heads_layout(k, heads, skip), self.layout,
                                     mask=kwargs.get("mask"), text_scale=self.text_scale)
            if not self.observed:
                self.observed = True
                self.observe(probs)
        if joint and self.text_scale != 1.0:
            return self._scaled(func, args, kwargs, length, skip)
        return self._run(func, *args, **kwargs)

    def _run(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _rows(self, func, args, kwargs, part: slice, keys, length: int, skip: bool):
        """The kernel's output for the query rows ``part`` against ``keys`` (in the kernel's layout), with the
        call's mask cut to those rows when it has one row per query."""
        q, v, rest = args[0], args[2], args[3:]
        kw = dict(kwargs)
        mask = kwargs.get("mask")
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] == length:
            kw["mask"] = mask[..., part, :]
        return self._run(func, q[..., part, :] if skip else q[:, part], keys, v, *rest, **kw)

    def _scaled(self, func, args, kwargs, length: int, skip: bool):
        """The joint attention with the image→text logits × ``text_scale``: the text queries against the keys as
        they are, the image queries against keys whose text part is scaled (the same logits as scaling that block
        of the score matrix), each through the host's kernel; outputs joined along the sequence."""
        k, t = args[1], self.layout.text
        outs = [self._rows(func, args, kwargs, slice(0, t), k, length, skip),
                self._rows(func, args, kwargs, slice(t, length), scaled_text_keys(k, t, self.text_scale, skip),
                           length, skip)]
        return torch.cat(outs, dim=-2 if kwargs.get("skip_output_reshape", False) else 1)

    def _edited(self, func, args, kwargs, heads: int, length: int, skip: bool):
        """The joint attention with ``editors`` applied to the image queries' rows, computed explicitly::

            S = q_img · kᵀ / √d (+ the call's mask)          [b, heads, n_img, L], float32
            P = edited_probs(S, …)                          the one edit pipeline: the image→text logits × text_scale
                                                            (the temperature), the biases and score edits of the
                                                            editors whose ``wants(call)`` is true; the image→image
                                                            logits × Π image_scale (Modulation's 1/τ)
            out_img = P · v

        The text queries' rows (and any rows after the image grid) go through the kernel untouched; the outputs are
        joined along the sequence in the layout the kernel returns."""
        q, k, v = args[0], args[1], args[2]
        t, n = self.layout.text, self.layout.image
        qh, kh, vh = (heads_layout(x, heads, skip) for x in (q, k, v))           # [b, heads, L, d]
        dtype = torch.promote_types(q.dtype, torch.float32)
        d = qh.shape[-1]
        qi = qh[..., t:t + n, :].to(dtype)                                        # [b, heads, n_img, d]
        scores = qi @ kh.to(dtype).transpose(-1, -2) * d ** -0.5                  # [b, heads, n_img, L]
        mask = kwargs.get("mask")
        if mask is not None:
            scores = scores + mask_rows(mask, slice(t, t + n), length).to(dtype)
        flat = lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)   # noqa: E731  [b, n, heads·d]
        probs = edited_probs(scores, [e for e in self.editors if e.wants(self.call)], self.call, q=flat(qi),
                             k_text=flat(kh[..., :t, :].to(dtype)), heads=heads, text=t, text_scale=self.text_scale,
                             image_tokens=n, image_scale=image_scale_of(self.editors, self.call))
        if self.observe is not None and not self.observed:
            self.observed = True
            text_probs = probs[..., :t]
            self.observe(text_probs / text_probs.sum(dim=-1, keepdim=True))
        out_img = (probs @ vh.to(dtype)).to(q.dtype)                             # [b, heads, n_img, d]
        keep_heads = kwargs.get("skip_output_reshape", False)
        if not keep_heads:
            out_img = out_img.transpose(1, 2).reshape(out_img.shape[0], n, -1)   # [b, n_img, heads·d]
        outs = [self._rows(func, args, kwargs, slice(0, t), k, length, skip), out_img]
        if t + n < length:                                                  # tokens after the grid (Kontext)
            outs.append(self._rows(func, args, kwargs, slice(t + n, length), k, length, skip))
        return torch.cat(outs, dim=-2 if keep_heads else 1)


# -- UNet self-attention --------------------------------------------------------------------------------------------
class SelfAttentionTemperature:
    """Attention Modulation's attn1 replace: ``softmax(q kᵀ/(τ√d))`` while the phase is below
    ``temperature_until`` (q scaled by 1/τ); otherwise the host kernel (or another pack's replace) on the untouched
    inputs."""

    is_attention_align_replace = True

    def __init__(self, attention_fn, settings: ModulationSettings, inner=None):
        self.attention_fn, self.settings, self.inner = attention_fn, settings, inner

    def __call__(self, q, k, v, extra_options):
        call = layer_call(q, extra_options)
        tau = self.settings.temperature_at(phase(call))
        if tau != 1.0:
            q = q / tau
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return self.attention_fn(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                 transformer_options=extra_options)
