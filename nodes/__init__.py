"""ComfyUI adapters (V3 schema). Each module holds one node; the maths lives in ``guidance``."""
from comfy_api.latest import ComfyExtension, io

from .capture import CaptureCrossAttention
from .text_attention import TextSelfAttention
from .visualize import VisualizeAttention

NODES: list[type[io.ComfyNode]] = [TextSelfAttention, CaptureCrossAttention, VisualizeAttention]


class AttentionAlignExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
