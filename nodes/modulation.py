"""Node: phase-wise Attention Modulation (the pack's design after arXiv 2404.13899; no official code exists)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.method import AttentionEditGuidance
from ..guidance.modulation import ModulationEdit, ModulationSettings
from .host import inputs
from .host.words import entities_for
from .registry import method
from .types import GuidanceType

METHOD = method("attention_modulation")


def _phase(name: str, default: float, help_text: str) -> io.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.05, tooltip=help_text)


class AttentionModulationGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="Phase-wise attention modulation after Wu et al. 2024 (no official code exists; this is the "
                        "pack's own design): sharper self-attention early on, each image patch restricted to the "
                        "entity it attends to most, and nouns weighted up early, attributes late. Near-zero cost on "
                        "UNets. On Flux and SD3/SD3.5 it edits every joint-attention block: the image→text logits "
                        "(masking, weights) and the image→image ones (temperature). Neutral settings (temperature 1, "
                        "mask_until 0, weights 1) leave the model unchanged.",
            inputs=[
                inputs.text_attention(),
                io.String.Input("entities", default="",
                                tooltip="Entity groups, ';'-separated, noun last: 'red car; blue bench'. Empty: found "
                                        "automatically (every noun, with its modifiers)."),
                inputs.parser(),
                io.Float.Input("temperature", default=0.8, min=0.05, max=2.0, step=0.05,
                               tooltip="Self-attention temperature τ in the early phase (< 1 sharpens; 1 = off)."),
                _phase("temperature_until", 0.3, "Phase (fraction of the steps) until which τ applies."),
                _phase("mask_until", 0.4, "Phase until which each patch only attends to its own entity (0 = off)."),
                io.Float.Input("noun_weight", default=1.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of the entity nouns' cross-attention before 'switch' (1 = off)."),
                io.Float.Input("attribute_weight", default=1.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of the attributes' cross-attention after 'switch' (1 = off)."),
                _phase("switch", 0.5, "Phase where the reweighting moves from nouns to attributes."),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance"),
                     io.String.Output("tokens", display_name="tokens", tooltip="The entity groups and their tokens.")],
        )

    @classmethod
    def execute(cls, text_attention, entities: str, parser: str, temperature: float, temperature_until: float,
                mask_until: float, noun_weight: float, attribute_weight: float, switch: float) -> io.NodeOutput:
        ta = text_attention
        groups, text = entities_for(ta, entities, parser)
        settings = ModulationSettings(temperature, temperature_until, mask_until, noun_weight, attribute_weight,
                                      switch)
        editor = ModulationEdit(settings, [[p for w in g for p in w.positions] for g in groups],
                                          nouns=[p for g in groups for p in g[-1].positions],
                                          attributes=[p for g in groups for w in g[:-1] for p in w.positions])
        guidance = AttentionEditGuidance(name="Attention Modulation", edit=editor, level=None,
                                         self_settings=settings, context=ta.context)
        return io.NodeOutput(guidance, text)
