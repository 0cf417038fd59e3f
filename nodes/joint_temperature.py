"""Node: a gradient-free image→text temperature on the joint attention of DiT models (TACA-style)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.joint_temperature import JointTemperatureSettings
from ..guidance.method import AttentionEditGuidance
from .host import inputs
from .registry import method
from .types import GuidanceType

METHOD = method("joint_temperature")


class JointTemperature(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return inputs.method_schema(
            METHOD,
            description="For Flux and SD3/SD3.5 (DiT): multiplies the image tokens' attention logits towards the "
                        "prompt's tokens by gamma in every joint-attention block during the first steps, so the "
                        "text weighs more while the layout forms (TACA, ICCV 2025, training-free). No gradients, no "
                        "word list. Connect it to Apply Guidance (or the Guided KSampler).",
            inputs=[
                io.Float.Input("gamma", default=1.2, min=0.5, max=3.0, step=0.05,
                               tooltip="Factor on the image→text logits (TACA: 1.2; 1 = off, above 1 sharpens the "
                                       "text's pull on the image)."),
                io.Float.Input("until", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Applies while step/steps is below this (TACA: the first 3 of 30 steps = "
                                       "0.1; 0 = off). Not used when first_steps is set."),
                # optional: API prompts saved before this input existed stay valid (0 = the fraction above)
                io.Int.Input("first_steps", default=0, min=0, max=1000, optional=True,
                             tooltip="TACA's own rule: apply during the first this-many steps whatever the step "
                                     "count (its released code: 3). 0 = use 'until' instead."),
            ],
            outputs=[GuidanceType.Output("guidance", display_name="guidance")],
        )

    @classmethod
    def execute(cls, gamma: float, until: float, first_steps: int = 0) -> io.NodeOutput:
        settings = JointTemperatureSettings(gamma=gamma, until=until, first_steps=first_steps)
        return io.NodeOutput(AttentionEditGuidance(name=settings.name, edit=settings, level=16))
