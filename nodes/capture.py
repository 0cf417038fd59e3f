"""Node: a model clone that records the positive prompt's cross-attention while any sampler runs it."""
from __future__ import annotations

from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..guidance.maps import AttentionRecorder
from ._unet import attach_observer, cross_attention_layers, select_levels
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
            display_name="Capture Cross-Attention (Attention Align)",
            category=CATEGORY,
            description="Returns a copy of the model that records the positive prompt's cross-attention maps "
                        "(mean over heads) while any sampler node runs it, without changing the result. Read them "
                        "with the visualisation node after sampling.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (UNet)."),
                io.String.Input("levels", default="all",
                                tooltip="Which resolutions to record, as image divisors: 8 = maps at the latent's "
                                        "resolution, 16, 32 (= 16×16 maps at 512 px, the level T-SAM and "
                                        "Attend-and-Excite use), 64; comma-separated, or 'all'."),
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
    def execute(cls, model, levels: str, record_steps: bool) -> io.NodeOutput:
        layers = select_levels(cross_attention_layers(model), levels)
        recorder = AttentionRecorder({layer.key for layer in layers}, keep_steps=record_steps)
        m = model.clone()
        attach_observer(m, layers, recorder)
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _begin_run_wrapper(recorder))
        return io.NodeOutput(m, recorder)
