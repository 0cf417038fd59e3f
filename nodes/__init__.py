"""The pack's ComfyUI nodes: one module per node (``extension.py`` lists them for ComfyUI, ``types.py`` holds the
socket types). Everything else that speaks ComfyUI's protocols lives in ``host/``; the mathematics in ``guidance``.
Nothing here imports ComfyUI at import time."""
