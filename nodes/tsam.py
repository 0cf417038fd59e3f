"""Node: T-SAM guidance (text self-attention maps → cross-attention similarity)."""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..guidance.text_attention import TextAttention
from ..guidance.tsam import REFINE_MODES, VARIANTS, tsam_guidance
from .host import inputs
from .registry import method
from .types import GuidanceType

METHOD = method("tsam")


class TSAMGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="T-SAM (Kim et al., CVPR 2025): during the first steps, gradient steps on the latent make the "
                        "similarity of the prompt tokens' cross-attention maps follow the text encoder's own "
                        "self-attention T. No word list and no parser: every prompt token takes part. Connect to a "
                        "Guided KSampler or Apply Guidance.",
            inputs=[
                inputs.text_attention(),
                io.Combo.Input("loss", options=list(VARIANTS), default="paper",
                               tooltip="paper: the paper's L1 formula between T and S. cosine: the released code's "
                                       "default (row-wise cosine between T and the similarity matrix)."),
                inputs.strength(),
                inputs.scale_factor(5.0, "Step size α_i = scale·√(1 − 0.5·i/N) (released config: 5; paper draft: "
                                          "20)."),
                inputs.guided_steps(30),
                io.Combo.Input("refine", options=list(REFINE_MODES), default="official",
                               tooltip="Iterative refinement at steps 0/10/20 of 50. official: 30 iterations, giving "
                                       "up at 20 if the loss is still above the threshold (released code). "
                                       "until_threshold: stop once below it. off: none."),
                io.Float.Input("threshold_per_token", default=0.14, min=0.0, max=10.0, step=0.01,
                               tooltip="Refinement threshold = this × (prompt tokens − 1) (official: 0.14)."),
                inputs.level(),
                inputs.fast(),
                inputs.dit_blocks(),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance")],
        )

    @classmethod
    def execute(cls, text_attention: TextAttention, loss: str, strength: float, scale_factor: float,
                guided_steps: int, refine: str, threshold_per_token: float, level: int,
                fast: bool = False, dit_blocks: str = "all") -> io.NodeOutput:
        ta = text_attention
        guidance = tsam_guidance(ta.target(), eos_index=ta.context_eos, first=ta.prompt_slice.start,
                                 causal=ta.causal, prompt=ta.prompt, variant=loss,
                                 strength=strength, scale=scale_factor, guided_paper_steps=guided_steps, refine=refine,
                                 threshold_per_token=threshold_per_token, level=level, context=ta.context)
        guidance = dataclasses.replace(guidance, fast=fast, dit_blocks=inputs.check_dit_blocks(dit_blocks))
        return io.NodeOutput(guidance)
