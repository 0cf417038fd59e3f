"""Node: Attention Regulation (bias on the target tokens' cross-attention logits — on DiTs, the image→text logits of
the joint attention; no backward pass through the model)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.attn_regulation import RegulationSettings
from ..guidance.method import AttentionEditGuidance
from .host import inputs
from .host.words import subjects_for
from .registry import method
from .types import GuidanceType

METHOD = method("attention_regulation")


class AttentionRegulationGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="Attention Regulation (Zhang et al., ECCV 2024): in the chosen cross-attention layers and the "
                        "first steps, a small optimisation adds Gaussian bumps to the target words' attention logits "
                        "so each target gets a strong, comparably sized region. No backward pass through the model. "
                        "On Flux and SD3/SD3.5 it edits the image→text logits of the joint-attention blocks (level "
                        "16). Connect to Apply Guidance (any sampler node) or a Guided KSampler.",
            inputs=[
                inputs.text_attention(),
                io.String.Input("targets", default="",
                                tooltip="Target words, comma-separated ('cat, dog'; 'dog#2' for a repeat); every "
                                        "wordpiece of a word is a target. Empty: the prompt's nouns, found "
                                        "automatically."),
                inputs.parser(),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             tooltip="Seeds the random initial bump weights (each sampling run restarts from it)."),
                io.Int.Input("edit_steps", default=25, min=0, max=50,
                             tooltip="Edit during the first this-many of 50 steps, scaled to your step count "
                                     "(official: 25)."),
                io.Int.Input("iterations", default=20, min=1, max=200,
                             tooltip="Optimisation steps per layer call (official: 20)."),
                io.Float.Input("learning_rate", default=100.0, min=0.0, max=10000.0, step=1.0,
                               tooltip="Step size of the bump weights, multiplied by batch × heads (official: 100)."),
                inputs.level(),
                inputs.dit_blocks(edit=True),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance"),
                     io.String.Output("tokens", display_name="tokens", tooltip="The targets and their tokens.")],
        )

    @classmethod
    def execute(cls, text_attention, targets: str, parser: str, seed: int, edit_steps: int, iterations: int,
                learning_rate: float, level: int, dit_blocks: str = "all") -> io.NodeOutput:
        ta = text_attention
        words, text = subjects_for(ta, targets, parser, "targets")
        positions = [p for w in words for p in w.positions]
        editor = RegulationSettings(targets=tuple(positions), eos_index=ta.context_eos, start_token=ta.starts_context,
                                    seed=seed, edit_paper_steps=edit_steps, iterations=iterations, lr=learning_rate)
        guidance = AttentionEditGuidance(name="Attention Regulation", edit=editor, level=level,
                                         context=ta.context, dit_blocks=inputs.check_dit_blocks(dit_blocks))
        return io.NodeOutput(guidance, text)
