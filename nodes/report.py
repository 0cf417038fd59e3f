"""Node: one sampling run's numbers as JSON — attention metrics of its maps and its loss per step.

An output node, so a script driving ComfyUI over HTTP (``scripts/compare.py``) reads the report from ``/history``;
in the UI it shows the JSON under the node.
"""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io, ui

from ..guidance.metrics import modifier_noun_overlap, noun_separation, ts_distance, weakest_subject_attention
from .host.context import resolve_record
from .host.inputs import maps_at, recorded_level
from .host.words import PARSERS, NothingFound, groups_for, subjects_for
from .types import CATEGORY, AttentionMapsType, GuidanceLogType, TextAttentionType


def _floats(t: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in t.reshape(-1)]


def attention_metrics(maps: torch.Tensor, ta, subjects: str, groups: str, parser: str) -> dict:
    """Per sample: the weakest subject's attention, modifier–noun overlap, noun separation, T–S distance (each
    omitted, with the reason, when the prompt has nothing for it)."""
    out: dict = {}
    try:
        words, text = subjects_for(ta, subjects, parser)
        positions = [w.positions for w in words]
        out["subjects"] = text
        out["weakest_subject_attention"] = _floats(weakest_subject_attention(
            maps, positions, eos_index=ta.context_eos, first=ta.prompt_slice.start, end=ta.context_end))
        if len(positions) >= 2:
            out["noun_separation"] = _floats(noun_separation(maps, positions))
    except NothingFound as exc:
        out["subjects"] = str(exc)
    try:
        resolved, text = groups_for(ta, groups, parser)
        out["groups"] = text
        out["modifier_noun_overlap"] = _floats(modifier_noun_overlap(maps, [[w.positions for w in g]
                                                                            for g in resolved]))
    except NothingFound as exc:
        out["groups"] = str(exc)
    if ta.num_prompt_tokens >= 2:
        out["ts_distance"] = _floats(ts_distance(maps, ta.target(), eos_index=ta.context_eos,
                                                 first=ta.prompt_slice.start, causal=ta.causal))
    return out


def log_summary(log) -> dict:
    steps = log.steps
    return {"method": log.method, "sampler": log.sampler, "path": log.path, "total_steps": log.total_steps,
            "guided_steps": len(steps),
            "loss_per_step": [_floats(s.loss_before) for s in steps],
            "loss_first": _floats(steps[0].loss_before) if steps else [],
            "loss_last": _floats(steps[-1].loss_final) if steps else [],
            "refinement_iterations": sum(int(s.iterations.max()) for s in steps if s.iterations is not None),
            "halted": [bool(v) for v in steps[-1].halted] if steps and steps[-1].halted is not None else [],
            "notes": list(log.notes)}


class AttentionReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignReport",
            display_name="Attention Report",
            category=CATEGORY,
            is_output_node=True,
            description="One sampling run's numbers as JSON: from its maps, the weakest subject's attention "
                        "(Attend-and-Excite's), modifier–noun overlap and noun–noun separation (SynGen's terms), the "
                        "T–S distance (T-SAM's loss); from its log, the loss per step. For comparing methods on "
                        "prompt sets (scripts/compare.py reads it over ComfyUI's HTTP API).",
            inputs=[
                TextAttentionType.Input("text_attention", tooltip="From Text Self-Attention: tokens, words and T."),
                AttentionMapsType.Input("attention_maps", optional=True,
                                        tooltip="From a Guided KSampler or Capture Cross-Attention."),
                GuidanceLogType.Input("guidance_log", optional=True,
                                      tooltip="From a Guided KSampler or Apply Guidance."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The sampler's LATENT: picks its run from Capture / Apply Guidance handles."),
                io.String.Input("subjects", default="", tooltip="As in Attend-and-Excite Guidance; empty = automatic."),
                io.String.Input("groups", default="", tooltip="As in SynGen Guidance; empty = automatic."),
                io.Combo.Input("parser", options=PARSERS, default="builtin", tooltip="For the automatic mode."),
                recorded_level("level", "Which recorded resolution the metrics read (0 averages every level)."),
            ],
            outputs=[io.String.Output("json", display_name="json", tooltip="The report (one JSON object).")],
        )

    @classmethod
    def execute(cls, text_attention, subjects: str, groups: str, parser: str, level: int, attention_maps=None,
                guidance_log=None, latent=None) -> io.NodeOutput:
        if attention_maps is None and guidance_log is None:
            raise ValueError("attention_maps / guidance_log: connect at least one of them")
        samples = None if latent is None else latent["samples"]
        report: dict = {"prompt": text_attention.prompt}
        if attention_maps is not None:
            rec = resolve_record(attention_maps, latent=samples, input_name="attention_maps")
            maps = maps_at(rec, level)
            report["level"] = level
            report.update(attention_metrics(maps.double(), text_attention, subjects, groups, parser))
            report["sampler_node"] = rec.stamp.node_id if rec.stamp else None
        if guidance_log is not None:
            report.update(log_summary(resolve_record(guidance_log, latent=samples, input_name="guidance_log")))
        text = json.dumps(report)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
