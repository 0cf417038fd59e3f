"""The extension ComfyUI loads: the pack's nodes (V3 schema), in the order the registry lists them."""
from importlib import import_module

from comfy_api.latest import ComfyExtension, io

from .registry import NODES as REGISTERED

#: every node class, imported from its module (``nodes/<module>.py``) as the registry names it
NODES: list[type[io.ComfyNode]] = [getattr(import_module(f".{node.module}", __package__), node.class_name)
                                   for node in REGISTERED]


class AttentionAlignExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
