"""The pack's socket types. Their values are plain Python objects from ``guidance``."""
from comfy_api.latest import io

#: guidance.text_attention.TextAttention
TextAttentionType = io.Custom("TEXT_ATTENTION")
#: guidance.maps.AttentionRecorder (filled while a sampler runs the captured model)
AttentionMapsType = io.Custom("ATTENTION_MAPS")

#: the node-library category: the pack's one name, as the node badge shows it (the install folder)
CATEGORY = "attention-align"
#: guidance.method.GradientGuidance (an objective with its schedule)
GuidanceType = io.Custom("GUIDANCE")
#: guidance.engine.GuidanceLog (filled while a sampler runs the guided model)
GuidanceLogType = io.Custom("GUIDANCE_LOG")
