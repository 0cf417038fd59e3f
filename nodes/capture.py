"""Node: a model clone that records the positive prompt's cross-attention while any sampler runs it."""
from __future__ import annotations

from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..guidance.maps import AttentionRecorder
from ._inputs import ALL_LEVELS, recorded_level
from ._unet import attach_observer, cross_attention_layers
from .types import CATEGORY, AttentionMapsType

WRAPPER_KEY = "attention_align_capture"


def _begin_run_wrapper(recorder: AttentionRecorder):
    """OUTER_SAMPLE wrapper: each sampling run starts from empty maps."""
    def wrapper(executor, *args, **kwargs):
        recorder.begin_run()
        return executor(*args, **kwargs)
    return wrapper


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
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (UNet)."),
                recorded_level("levels", "Which resolution to record."),
                io.Boolean.Input("record_steps", default=False,
                                 tooltip="Also keep one map per sampler step (σ); off keeps only the mean over all "
                                         "steps, which needs far less memory."),
            ],
            outputs=[
                io.Model.Output("captured_model", display_name="model",
                                tooltip="The model with capture attached; connect it to a sampler."),
                AttentionMapsType.Output("attention_maps", display_name="attention_maps", tooltip="Filled while the sampler runs; holds the most "
                                                                   "recent sampling run."),
            ],
        )

    @classmethod
    def execute(cls, model, levels: int, record_steps: bool) -> io.NodeOutput:
        layers = cross_attention_layers(model)
        available = sorted({layer.level for layer in layers})
        if levels != ALL_LEVELS and levels not in available:
            raise ValueError(f"levels: {levels} is not a cross-attention level of this model; use 0 (all levels) or "
                             f"one of {', '.join(map(str, available))} (image divisors; 32 = 16×16 maps at 512 px)")
        layers = [layer for layer in layers if levels in (ALL_LEVELS, layer.level)]
        recorder = AttentionRecorder({layer.key: layer.downsample for layer in layers}, keep_steps=record_steps)
        m = model.clone()
        attach_observer(m, layers, recorder)
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _begin_run_wrapper(recorder))
        return io.NodeOutput(m, recorder)
