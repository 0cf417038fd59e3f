"""Node: Attend-and-Excite guidance with subjects chosen by words."""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..guidance.attend_excite import AttendExciteObjective, attend_excite_guidance, drops_padding
from ..guidance.grouping import Selection
from ..guidance.method import MeanObjective
from .host import inputs
from .host.words import in_twin, subjects_for
from .registry import method
from .types import GuidanceType

SOFTMAX = ["auto", "official", "normalize_eot"]

METHOD = method("attend_excite")


class AttendExciteGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="Attend-and-Excite (Chefer et al., 2023): gradient steps on the latent raise the cross-"
                        "attention peak of the most neglected subject, so every subject appears. Connect to a Guided "
                        "KSampler or Apply Guidance.",
            inputs=[
                inputs.text_attention(),
                io.String.Input("subjects", default="",
                                tooltip="Subject words, comma-separated ('cat, dog'; a repeated word as 'dog#2'). "
                                        "Empty: the prompt's nouns, found automatically (see Show Tokens)."),
                inputs.parser(),
                io.Combo.Input("softmax", options=SOFTMAX, default="auto",
                               tooltip="official: softmax(100·A) over every token after bos, eos and padding "
                                       "included (official SD1 code, diffusers). normalize_eot: over the prompt's "
                                       "tokens only (the official repo's SD 2.1 mode; gsn-factory on SD3). auto: "
                                       "what the references use for the prompt's encoder: official for CLIP-L/G "
                                       "(SD1.x, SDXL), normalize_eot for SD2.x's OpenCLIP-H and for T5 (Flux, "
                                       "SD3), whose context is mostly padding."),
                inputs.strength(),
                inputs.scale_factor(20.0, "Step size α_i = scale·√(1 − 0.5·i/N) (official: 20)."),
                inputs.guided_steps(25),
                io.Int.Input("max_refinement_steps", default=20, min=0, max=100,
                             tooltip="Iterative refinement at steps 0/10/20 of 50 until the subjects reach "
                                     "0.05/0.5/0.8 attention (official: at most 20 iterations; 0 disables)."),
                inputs.level(),
                inputs.fast(),
                inputs.dit_blocks(),
                inputs.encoders(),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance"),
                     io.String.Output("tokens", display_name="tokens", tooltip="The subjects and their tokens.")],
        )

    @classmethod
    def execute(cls, text_attention, subjects: str, parser: str, softmax: str, strength: float, scale_factor: float,
                guided_steps: int, max_refinement_steps: int, level: int,
                fast: bool = False, dit_blocks: str = "all", encoders: str = "text_attention") -> io.NodeOutput:
        if softmax not in SOFTMAX:
            raise ValueError(f"softmax: '{softmax}' is not one of {', '.join(SOFTMAX)}")
        ta = text_attention
        both = inputs.wants_both_encoders(encoders, ta)
        words, text = subjects_for(ta, subjects, parser)

        def drops(encoder: str) -> bool:
            return softmax == "normalize_eot" or (softmax == "auto" and drops_padding(encoder))

        normalize_eot = drops(ta.encoder)
        text += "; softmax over " + ("the prompt's tokens (normalize_eot)" if normalize_eot else
                                     "every token after bos, padding included (official)")
        guidance = attend_excite_guidance([w.positions for w in words], eos_index=ta.context_eos,
                                          first=ta.prompt_slice.start, end=ta.context_end,
                                          normalize_eot=normalize_eot,
                                          strength=strength, scale=scale_factor, guided_paper_steps=guided_steps,
                                          max_iters=max_refinement_steps,
                                          level=level, context=ta.context)
        if both:                                       # the same subjects on the other encoder's tokens, loss averaged
            twin, twin_words = ta.twin, in_twin(ta, words, "subjects")
            other = AttendExciteObjective([w.positions for w in twin_words], eos_index=twin.eos,
                                          normalize_eot=drops(twin.encoder), level=level, first=twin.first,
                                          end=twin.end)
            guidance = dataclasses.replace(guidance, objective=MeanObjective([guidance.objective, other]))
            text += f"\nand on {twin.encoder}'s tokens, loss averaged: " + Selection(twin_words, []).subjects_text() + \
                "; softmax over " + ("its prompt's tokens" if drops(twin.encoder) else "every token after bos")
        guidance = dataclasses.replace(guidance, fast=fast, dit_blocks=inputs.check_dit_blocks(dit_blocks))
        return io.NodeOutput(guidance, text)
