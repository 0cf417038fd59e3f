"""Attaching a method to a model clone, and the run context of each sampling run (``context.py``).

``attach(clone, method, backend, layers)`` puts the pack's stateless routers on those layers through the model's
:class:`~.backend.Backend` (taking over another pack's replace found there) and an ``OUTER_SAMPLE`` wrapper
(:class:`Attachment`) on the clone. For every sampling run of the clone — or of any later clone of it — the outermost
of the pack's wrappers creates the run's :class:`~.context.Session` in a copy of the guider's ``model_options``
(``transformer_options[PASS_KEY]``, where the routers and the pack's other wrappers find it), every attachment adds
its method's fresh per-run state, and when the sampler returns each publishes its immutable record to its
:class:`~.context.RunBoard`; the guider's options are restored in ``finally``, as core's EasyCache node does.
"""
from __future__ import annotations

from collections.abc import Mapping

import comfy.model_patcher
from comfy.patcher_extension import WrappersMP
from comfy_execution.utils import get_executing_context

from ...guidance.attention import LayerKey
from ...guidance.records import RunInfo, RunStamp
from .backend import Backend
from .context import PASS_KEY, Method, RunBoard, Session
from .samplers import sampler_label

WRAPPER_KEY = "attention_align"


class Attachment:
    """One method attached to one model clone: the model's backend, the method's layers (key → level), the board its
    records go to, checks run at the start of each run (``check(guider, noise)``), and what else each run's own
    options need (``prepare(model_options)``, after the routers are reclaimed)."""

    def __init__(self, method: Method, backend: Backend, layers: Mapping[LayerKey, int], board: RunBoard, checks=(),
                 prepare=()):
        self.method, self.backend, self.layers, self.board = method, backend, dict(layers), board
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
            self.backend.reclaim(guider.model_options, self.layers, editing=self.method.edits_attention)
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


def attach(model_clone, method: Method, backend: Backend, layers: Mapping[LayerKey, int], *, kind: str, checks=(),
           prepare=()) -> tuple[RunBoard, Attachment]:
    """Attach ``method`` to ``model_clone`` on ``layers`` of its ``backend``; returns the board its runs publish to
    (``kind`` names the node in its errors) and the attachment (the key of the method's state in each run's
    session)."""
    backend.install(model_clone, layers, editing=method.edits_attention)
    board = RunBoard(kind)
    attachment = Attachment(method, backend, layers, board, checks, prepare)
    model_clone.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, attachment)
    return board, attachment
