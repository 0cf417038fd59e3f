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


def line_plot_tile(xs: list[int], ys: list[float], size: tuple[int, int], title: str, x_label: str = "step",
                   marks: set[int] | None = None, ends: list[float] | None = None) -> torch.Tensor:
    """A small line chart (points joined, y range labelled) fitted into ``size`` (H, W); ``marks`` x values get a
    ring (e.g. refinement steps); ``ends`` (one per x) are drawn as blue drops from each point where they differ
    (e.g. the loss after refinement)."""
    h, w = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(max(9, min(h, w) // 22))
    draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    values = list(ys) + list(ends or [])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    labels = [f"{hi:.4g}", f"{lo:.4g}"]
    left = max(draw.textbbox((0, 0), s, font=font)[2] for s in labels) + 8
    top, bottom, right = font.size + 12, h - font.size - 12, w - 8
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    draw.text((4, top - 2), labels[0], fill=(0, 0, 0), font=font)
    draw.text((4, bottom - font.size), labels[1], fill=(0, 0, 0), font=font)
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0, 1)
    span = max(1, x_hi - x_lo)
    pts = [(left + (x - x_lo) / span * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top))
           for x, y in zip(xs, ys)]
    if len(pts) > 1:
        draw.line(pts, fill=(200, 40, 40), width=2)
    for (px, py), y, end in zip(pts, ys, ends or []):
        if end != y:
            ey = bottom - (end - lo) / (hi - lo) * (bottom - top)
            draw.line([(px, py), (px, ey)], fill=(30, 30, 200), width=2)
            draw.ellipse((px - 3, ey - 3, px + 3, ey + 3), fill=(30, 30, 200))
    for (px, py), x in zip(pts, xs):
        r = 3
        draw.ellipse((px - r, py - r, px + r, py + r), fill=(200, 40, 40))
        if marks and x in marks:
            draw.ellipse((px - 2 * r, py - 2 * r, px + 2 * r, py + 2 * r), outline=(30, 30, 200), width=2)
    draw.text((left, bottom + 4), f"{x_label} {x_lo}…{x_hi}", fill=(0, 0, 0), font=font)
    return _to_tensor(img)
