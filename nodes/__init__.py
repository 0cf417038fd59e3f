"""ComfyUI adapters (V3 schema). Each module holds one node; the maths lives in ``guidance``."""
from comfy_api.latest import ComfyExtension, io

from .apply_guidance import ApplyGuidance
from .attend_excite import AttendExciteGuidance
from .attn_regulation import AttentionRegulationGuidance
from .capture import CaptureCrossAttention
from .guided_sampler import GuidedKSampler
from .joint_temperature import JointTemperature
from .modulation import AttentionModulationGuidance
from .report import AttentionReport
from .show_tokens import ShowTokens
from .syngen import SynGenGuidance
from .text_attention import TextSelfAttention
from .toy_loader import LoadToyModel
from .tsam import TSAMGuidance
from .visualize import VisualizeAttention

NODES: list[type[io.ComfyNode]] = [TextSelfAttention, CaptureCrossAttention, VisualizeAttention, TSAMGuidance,
                                   AttendExciteGuidance, SynGenGuidance, AttentionRegulationGuidance,
                                   AttentionModulationGuidance, ShowTokens, GuidedKSampler, ApplyGuidance, LoadToyModel,
                                   AttentionReport, JointTemperature]


class AttentionAlignExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
