"""Node: a model clone that records the positive prompt's cross-attention while any sampler runs it."""
from __future__ import annotations

from comfy_api.latest import io

from .host.backend import backend_of, layer_levels
from .host.guided import captured_model
from .host.inputs import ALL_LEVELS, recorded_level
from .types import CATEGORY, AttentionMapsType


class CaptureCrossAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignCaptureCrossAttention",
            display_name="Capture Cross-Attention",
            category=CATEGORY,
            description="Returns a copy of the model that records the positive prompt's cross-attention maps "
                        "(mean over heads) while any sampler node runs it, without changing the result. Read them "
                        "with the visualisation node after sampling.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (UNet), or Flux / SD3 / SD3.5 (DiT: the image→text block of each joint-attention block, at image ÷16)."),
                recorded_level("levels", "Which resolution to record."),
                io.Boolean.Input("record_steps", default=False,
                                 tooltip="Also keep one map per sampler step (σ); off keeps only the mean over all "
                                         "steps, which needs far less memory."),
            ],
            outputs=[
                io.Model.Output("captured_model", display_name="model",
                                tooltip="The model with capture attached; connect it to a sampler."),
                AttentionMapsType.Output("attention_maps", display_name="attention_maps",
                                         tooltip="Every sampling run of this model records its own maps here when it "
                                                 "ends. Visualize Attention reads the run whose LATENT you connect "
                                                 "to it (or the only sampler that used the model)."),
            ],
        )

    @classmethod
    def execute(cls, model, levels: int, record_steps: bool) -> io.NodeOutput:
        available = layer_levels(backend_of(model).layers())
        if levels != ALL_LEVELS and levels not in available:
            raise ValueError(f"levels: {levels} is not a cross-attention level of this model; use 0 (all levels) or "
                             f"one of {', '.join(map(str, available))} (image divisors; 32 = 16×16 maps at 512 px)")
        m, board = captured_model(model, None if levels == ALL_LEVELS else levels, keep_steps=record_steps)
        return io.NodeOutput(m, board)
