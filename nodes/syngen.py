"""Node: SynGen guidance with modifier–noun groups chosen by words."""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..guidance.grouping import Selection
from ..guidance.method import MeanObjective
from ..guidance.syngen import SynGenObjective, syngen_guidance
from .host import inputs
from .host.words import groups_for, in_twin
from .registry import method
from .types import GuidanceType

METHOD = method("syngen")


class SynGenGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="SynGen (Rassin et al., NeurIPS 2023): gradient steps on the latent pull each modifier's "
                        "cross-attention onto its noun and away from the other words, so attributes land on the "
                        "right object. Connect to a Guided KSampler or Apply Guidance.",
            inputs=[
                inputs.text_attention(),
                io.String.Input("groups", default="",
                                tooltip="Groups separated by ';', the noun last: 'red car; blue bench' (a repeated "
                                        "word as 'red#2'). Empty: found automatically (see Show Tokens)."),
                inputs.parser(),
                inputs.strength(),
                inputs.scale_factor(20.0, "Constant step size (official: 20)."),
                inputs.guided_steps(25),
                inputs.level(),
                inputs.fast(),
                inputs.dit_blocks(),
                inputs.encoders(),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance"),
                     io.String.Output("tokens", display_name="tokens", tooltip="The groups and their tokens.")],
        )

    @classmethod
    def execute(cls, text_attention, groups: str, parser: str, strength: float, scale_factor: float,
                guided_steps: int, level: int,
                fast: bool = False, dit_blocks: str = "all", encoders: str = "text_attention") -> io.NodeOutput:
        ta = text_attention
        both = inputs.wants_both_encoders(encoders, ta)
        resolved, text = groups_for(ta, groups, parser)
        guidance = syngen_guidance([[w.positions for w in g] for g in resolved], eos_index=ta.context_eos,
                                   first=ta.prompt_slice.start,
                                   strength=strength, scale=scale_factor, guided_paper_steps=guided_steps, level=level,
                                   context=ta.context)
        if both:                                       # the same groups on the other encoder's tokens, loss averaged
            twin = ta.twin
            twin_groups = [in_twin(ta, g, "groups") for g in resolved]
            other = SynGenObjective([[w.positions for w in g] for g in twin_groups], eos_index=twin.eos, level=level,
                                    first=twin.first)
            guidance = dataclasses.replace(guidance, objective=MeanObjective([guidance.objective, other]))
            text += f"\nand on {twin.encoder}'s tokens, loss averaged: " + Selection([], twin_groups).groups_text()
        guidance = dataclasses.replace(guidance, fast=fast, dit_blocks=inputs.check_dit_blocks(dit_blocks))
        return io.NodeOutput(guidance, text)
