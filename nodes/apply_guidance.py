"""Node: attach gradient guidance to a MODEL, for the stock sampler nodes."""
from __future__ import annotations

from comfy_api.latest import io

from .host.guided import guided_model
from .types import CATEGORY, GuidanceLogType, GuidanceType


class ApplyGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignApplyGuidance",
            display_name="Apply Guidance",
            category=CATEGORY,
            description="Returns a copy of the model that applies the guidance whenever a sampler node runs it: "
                        "KSampler, KSampler (Advanced), SamplerCustom(Advanced), with any of ComfyUI's samplers.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (UNet), or Flux / SD3 / SD3.5 (DiT)."),
                GuidanceType.Input("guidance", tooltip="From a guidance node such as T-SAM Guidance."),
            ],
            outputs=[
                io.Model.Output("guided_model", display_name="model", tooltip="Connect to a sampler node."),
                GuidanceLogType.Output("guidance_log", display_name="guidance_log",
                                       tooltip="Every sampling run of this model records its per-step loss here when "
                                               "it ends; Visualize Attention reads the run whose LATENT you connect "
                                               "to it."),
            ],
        )

    @classmethod
    def execute(cls, model, guidance) -> io.NodeOutput:
        m, board = guided_model(model, guidance)
        return io.NodeOutput(m, board)
