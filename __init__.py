"""Attention Align: make text-to-image diffusion follow the prompt through the model's attention, at inference time.

ComfyUI loads this folder as a custom node package and calls :func:`comfy_entrypoint`. Nothing here imports ComfyUI
at import time, so ``guidance`` (pure torch) can be imported and tested without the host. ``web/`` holds the
small frontend extension that shows Show Tokens' text on the node.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import AttentionAlignExtension

    return AttentionAlignExtension()
