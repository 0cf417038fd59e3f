"""Attaching a method to a model clone, and the session of each sampling run (host side of ``guidance/session.py``).

``attach(clone, method, layers)`` puts the pack's stateless attention router on those layers (taking over another
pack's replace found there, see :func:`reclaim_layers`) and an ``OUTER_SAMPLE`` wrapper (:class:`Attachment`) on the clone. For every sampling
run of the clone — or of any later clone of it — the outermost of the pack's wrappers creates the run's
:class:`~..guidance.session.Session` in a copy of the guider's ``model_options`` (``transformer_options[PASS_KEY]``,
where the router finds it), every attachment adds its method's fresh per-run state, and when the sampler returns
each publishes its immutable record to its :class:`~..guidance.session.RunBoard`; the guider's options are restored
in ``finally``, as core's EasyCache node does.
"""
from __future__ import annotations

from collections.abc import Mapping

import comfy.model_patcher
from comfy.patcher_extension import WrappersMP
from comfy_execution.utils import get_executing_context

from ..guidance.attention_patch import PASS_KEY, CrossAttentionReplace
from ..guidance.session import LayerKey, RunBoard, RunInfo, RunStamp, Session
from ._dit import add_joint_geometry, is_joint_key, reclaim_joint_blocks
from ._samplers import sampler_label
from ._unet import host_attention

WRAPPER_KEY = "attention_align"


class Attachment:
    """One method attached to one model clone: its layers (replace key → level), the board its records go to,
    checks run at the start of each run (``check(guider, noise)``), and what else each run's own options need
    (``prepare(model_options)``, after the router is reclaimed)."""

    def __init__(self, method, layers: Mapping[LayerKey, int], board: RunBoard, checks=(), prepare=()):
        self.method, self.layers, self.board = method, dict(layers), board
        self.checks, self.prepare = tuple(checks), tuple(prepare)

    def __call__(self, executor, *args, **kwargs):
        """The OUTER_SAMPLE wrapper: args are (noise, latent_image, sampler, sigmas, denoise_mask, callback,
        disable_pbar, seed) as CFGGuider.outer_sample takes them."""
        guider = executor.class_obj
        noise, sampler, sigmas = args[0], args[2], args[3]
        for check in self.checks:
            check(guider, noise)
        original = guider.model_options
        ctx = original.get("transformer_options", {}).get(PASS_KEY) or {}
        session = ctx.get("session")
        owner = session is None
        if owner:
            context = get_executing_context()
            session = Session(RunInfo(sigmas=sigmas, sampler=sampler_label(sampler),
                                      node_id=getattr(context, "node_id", None),
                                      prompt_id=getattr(context, "prompt_id", None),
                                      context_tokens=_positive_tokens(guider)))
            options = comfy.model_patcher.create_model_options_clone(original)
            options.setdefault("transformer_options", {})[PASS_KEY] = {"session": session}
            guider.model_options = options
        try:
            reclaim(guider.model_options, self.layers, editing=getattr(self.method, "edits_attention", False))
            for prepare in self.prepare:
                prepare(guider.model_options)
            run = self.method.begin(session.info, self.layers)
            session.add(self, run)
            out = executor(*args, **kwargs)
        finally:
            if owner:
                guider.model_options = original
        info = session.info
        self.board.publish(run.end(RunStamp(info.node_id, info.prompt_id, self.board.next_serial(),
                                            session.output_digest(out))))
        return out


def _positive_tokens(guider) -> int | None:
    """The token count of the positive prompt's context, if all its conditionings share one."""
    lengths = set()
    for c in getattr(guider, "conds", {}).get("positive") or []:
        cond = c.get("cross_attn")
        if cond is None:
            cond = getattr(c.get("model_conds", {}).get("c_crossattn"), "cond", None)
        if cond is None:
            return None
        lengths.add(int(cond.shape[1]))
    return lengths.pop() if len(lengths) == 1 else None


def _describe(replace) -> str:
    """Where another pack's replace comes from: its function's or its class's module and name."""
    named = replace if hasattr(replace, "__qualname__") else type(replace)
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"


def _router_over(attention_fn, foreign, carried=None) -> CrossAttentionReplace:
    """A router that takes ``foreign`` (another pack's replace, or None) over, keeping the terms ``carried`` (a router)
    already holds. A replace that speaks IPAdapter Plus's protocol (its ``Attn2Replace``: plain attention plus
    ``callback``/``kwargs`` lists of terms) is taken over term by term, so the pack's own attention (edited, if a
    method edits it) is what the terms are added to; any other replace is wrapped whole: it computes the output and
    the pack only observes."""
    callbacks, kwargs = getattr(foreign, "callback", None), getattr(foreign, "kwargs", None)
    ipadapter = isinstance(callbacks, list) and isinstance(kwargs, list) and len(callbacks) == len(kwargs) \
        and callable(getattr(foreign, "add", None))
    router = CrossAttentionReplace(attention_fn, inner=None if ipadapter else foreign)
    if ipadapter:
        router.added, router.absorbed = tuple(zip(callbacks, (dict(k) for k in kwargs))), (foreign,)
    if carried is not None:
        router.added, router.absorbed = router.added + carried.added, router.absorbed + carried.absorbed
    return router


def reclaim_layers(model_options: dict, layers, *, editing: bool) -> None:
    """Make sure each layer of this run (``model_options``: the run's own copy) is routed through the pack.

    Core calls the replace at the 3-part key if there is one, else the 2-part key. A replace installed after the
    pack's router can therefore drop it (the same 3-part key, overwritten: PLADIS, DAAM's sampler) or be dropped by it
    (a 2-part key the router's 3-part key shadows: IPAdapter on SD1.5). For this run only, such a layer gets a router
    that takes the other replace over (see :func:`_adopted`), so both run. An edit cannot go through another pack's
    opaque replace: that is refused naming the pack and what to do."""
    replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    attn2 = dict(replaces.get("attn2", {}))
    changed = False
    for key in layers:
        full, short = attn2.get(key), attn2.get(key[:2])
        if getattr(full, "is_attention_align_replace", False):
            if short is None or short is full.inner or any(short is a for a in full.absorbed) \
                    or getattr(short, "is_attention_align_replace", False):
                router = full
            elif full.inner is None:                                  # ours shadows a 2-part key installed later
                router = _router_over(full.attention_fn, short, carried=full)
                attn2[key], changed = router, True
            else:
                raise ValueError(f"model: layer {key} carries {_describe(full.inner)} and {_describe(short)}, two other "
                                 "packs' replaces of its cross-attention; only one can run beside Attention Align")
        else:
            router = _router_over(host_attention, full if full is not None else short)
            attn2[key], changed = router, True
        if editing and router.inner is not None:
            raise ValueError(f"model: cross-attention layer {key} is already replaced by another node pack "
                             f"({_describe(router.inner)}); an attention edit cannot go through it. Apply the edit "
                             "(Attention Regulation / Modulation) before that pack's node, or choose a level without "
                             "such layers.")
    if changed:
        replaces["attn2"] = attn2


def reclaim(model_options: dict, layers, *, editing: bool) -> None:
    """Route ``layers`` through the pack in these options: UNet attn2 layers (:func:`reclaim_layers`) or DiT
    joint-attention blocks (``_dit.reclaim_joint_blocks``: an edit reaches their attention through the override
    the block router hands the block, also when another pack's block replace runs it)."""
    if layers and is_joint_key(next(iter(layers))):
        reclaim_joint_blocks(model_options, layers)
    else:
        reclaim_layers(model_options, layers, editing=editing)


def attach(model_clone, method, layers: Mapping[LayerKey, int], *, kind: str, checks=(),
           prepare=()) -> tuple[RunBoard, Attachment]:
    """Attach ``method`` to ``model_clone`` on ``layers``; returns the board its runs publish to (``kind`` names
    the node in its errors) and the attachment (the key of the method's state in each run's session)."""
    # the router on each layer (in the clone's own options: clone() deep-copied them), taking over another pack's
    reclaim(model_clone.model_options, layers, editing=getattr(method, "edits_attention", False))
    if layers and is_joint_key(next(iter(layers))):
        add_joint_geometry(model_clone)                       # where text and image tokens sit, per model call
    board = RunBoard(kind)
    attachment = Attachment(method, layers, board, checks, prepare)
    model_clone.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, attachment)
    return board, attachment
