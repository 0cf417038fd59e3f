"""Text on images (token labels, axis labels) with Pillow, which ComfyUI itself requires.

Tiles are ``[H, W, 3]`` float tensors in 0..1 (ComfyUI IMAGE rows); drawing goes through 8-bit PIL images.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..guidance.viz import matrix_pixels


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)      # Pillow ≥ 10.1: scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _to_pil(tile: torch.Tensor) -> Image.Image:
    return Image.fromarray((tile.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)


def label_tile(tile: torch.Tensor, text: str) -> torch.Tensor:
    """Write ``text`` on a dark box in the tile's top-left corner."""
    img = _to_pil(tile)
    draw = ImageDraw.Draw(img)
    size = max(10, min(img.size) // 14)
    font = _font(size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - x0, pad - y0), text, fill=(255, 255, 255), font=font)
    return _to_tensor(img)


def matrix_tile(matrix: torch.Tensor, labels: list[str], size: tuple[int, int], title: str) -> torch.Tensor:
    """An ``[L, L]`` matrix as a heat map with ``labels`` on both axes and a title, fitted into ``size`` (H, W)."""
    h, w = size
    n = matrix.shape[0]
    if len(labels) != n:
        raise ValueError(f"matrix has {n} rows but {len(labels)} labels were given")
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font_size = max(9, min(h, w) // 22)
    font = _font(font_size)
    label_w = max((draw.textbbox((0, 0), s, font=font)[2] for s in labels), default=0) + 6
    title_h = font_size + 8
    side = min(w - label_w - 4, h - label_w - title_h - 4)
    cell = max(1, side // max(n, 1))
    grid_px = cell * n
    x0, y0 = label_w, title_h + label_w
    pixels = matrix_pixels(matrix, cell)
    img.paste(_to_pil(pixels), (x0, y0))
    draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    for i, text in enumerate(labels):
        cy = y0 + i * cell + cell // 2
        tb = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 - 4 - (tb[2] - tb[0]), cy - (tb[3] - tb[1]) // 2 - tb[1]), text, fill=(0, 0, 0), font=font)
        # column labels: drawn on a small image and rotated to read bottom-up
        col = Image.new("RGB", (tb[2] - tb[0] + 2, tb[3] + 2), (255, 255, 255))
        ImageDraw.Draw(col).text((-tb[0], 0), text, fill=(0, 0, 0), font=font)
        col = col.rotate(90, expand=True)
        cx = x0 + i * cell + cell // 2 - col.size[0] // 2
        img.paste(col, (cx, y0 - 4 - col.size[1]))
    draw.rectangle((x0 - 1, y0 - 1, x0 + grid_px, y0 + grid_px), outline=(0, 0, 0))
    return _to_tensor(img)
