"""The pack's socket types. Their values are plain Python objects: from ``guidance``, and the run boards of
``host/context.py``."""
from comfy_api.latest import io

#: guidance.text_attention.TextAttention
TextAttentionType = io.Custom("TEXT_ATTENTION")
#: guidance.maps.AttentionMaps (one run's maps; from the Guided KSampler), or nodes.host.context.RunBoard (from
#: Capture Cross-Attention: every run of the captured model publishes its AttentionMaps there)
AttentionMapsType = io.Custom("ATTENTION_MAPS")

#: the node-library category: the pack's one name, as the node badge shows it (the install folder)
CATEGORY = "attention-align"
#: guidance.method.GradientGuidance (an objective with its schedule) or guidance.method.AttentionEditGuidance (an
#: edit of the attention itself)
GuidanceType = io.Custom("GUIDANCE")
#: guidance.engine.GuidanceRecord (one run; from the Guided KSampler), or nodes.host.context.RunBoard (from Apply
#: Guidance: every run of the guided model publishes its GuidanceRecord there)
GuidanceLogType = io.Custom("GUIDANCE_LOG")
