"""Text on images (token labels, axis labels) with Pillow, which ComfyUI itself requires.

Tiles are ``[H, W, 3]`` float tensors in 0..1 (ComfyUI IMAGE rows); drawing goes through 8-bit PIL images.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...guidance.viz import colorbar, matrix_pixels


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)      # Pillow ≥ 10.1: scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _to_pil(tile: torch.Tensor) -> Image.Image:
    return Image.fromarray((tile.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)


def fit_text(draw: ImageDraw.ImageDraw, text: str, max_width: int, size: int, *, min_size: int = 7):
    """``(font, text)`` that fits ``max_width`` px: the font shrinks down to ``min_size``, then the text is cut with
    an ellipsis (never drawn past the edge)."""
    for s in range(size, min_size - 1, -1):
        font = _font(s)
        if draw.textlength(text, font=font) <= max_width:
            return font, text
    font = _font(min_size)
    while len(text) > 1 and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return font, text + "…"


def label_tile(tile: torch.Tensor, text: str) -> torch.Tensor:
    """Write ``text`` on a dark box in the tile's top-left corner."""
    img = _to_pil(tile)
    draw = ImageDraw.Draw(img)
    size = max(10, min(img.size) // 14)
    pad = max(2, size // 4)
    font, text = fit_text(draw, text, img.size[0] - 2 * pad, size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.rectangle((0, 0, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - x0, pad - y0), text, fill=(255, 255, 255), font=font)
    return _to_tensor(img)


def colorbar_height(h: int) -> int:
    """Rows a colour bar with its labels takes at the bottom of an ``h`` px tile."""
    return max(12, h // 20)


def draw_colorbar(img: Image.Image, lo: float, hi: float, *, x0: int = 0, x1: int | None = None) -> None:
    """A turbo colour bar across the bottom rows of ``img`` (between ``x0`` and ``x1``), labelled with the values its
    ends stand for: the legend of a heat map normalised from ``lo`` (coldest) to ``hi`` (hottest)."""
    w, h = img.size
    x1 = w if x1 is None else x1
    bar_h = colorbar_height(h)
    top = h - bar_h
    img.paste(_to_pil(colorbar(x1 - x0, bar_h)), (x0, top))
    draw = ImageDraw.Draw(img)
    size = max(7, bar_h - 4)
    for text, align in ((f"{lo:.3g}", "left"), (f"{hi:.3g}", "right")):
        font, text = fit_text(draw, text, (x1 - x0) // 2 - 4, size)
        tw = draw.textlength(text, font=font)
        x = x0 + 2 if align == "left" else x1 - 2 - tw
        bb = draw.textbbox((x, top + 1), text, font=font)
        draw.rectangle((bb[0] - 1, top, bb[2] + 1, h - 1), fill=(0, 0, 0))
        draw.text((x, top + 1), text, fill=(255, 255, 255), font=font)


def heat_tile_with_legend(tile: torch.Tensor, text: str, lo: float, hi: float) -> torch.Tensor:
    """A heat-map tile with its word in the top-left corner and a colour bar from ``lo`` to ``hi`` at the bottom."""
    img = _to_pil(label_tile(tile, text))
    draw_colorbar(img, lo, hi)
    return _to_tensor(img)


def matrix_layout(n: int, labels: list[str], size: tuple[int, int], title: str) -> dict:
    """Where :func:`matrix_tile` draws: font sizes, cell size, grid origin, which labels are drawn (every k-th when
    cells are smaller than the smallest legible font) and every label's box, all inside the tile."""
    h, w = size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    base = max(9, min(h, w) // 22)
    title_font, title_text = fit_text(probe, title, w - 8, base)
    title_h = title_font.size + 8
    bar_h = colorbar_height(h)
    for font_size in range(base, 5, -1):
        font = _font(font_size)
        label_w = max((probe.textlength(s, font=font) for s in labels), default=0) + 6
        side = min(w - label_w - 4, h - label_w - title_h - bar_h - 8)
        cell = max(1, int(side) // max(n, 1))
        if cell > font_size or font_size == 6:
            break
    text_h = font_size + 1
    every = max(1, -(-text_h // cell))
    x0, y0 = int(label_w), int(title_h + label_w)
    boxes = []
    for i, text in enumerate(labels):
        if i % every:
            continue
        tw = probe.textlength(text, font=font)
        cy = y0 + i * cell + cell // 2
        boxes.append(("row", i, (x0 - 4 - tw, cy - text_h / 2, x0 - 4, cy + text_h / 2)))
        cx = x0 + i * cell + cell // 2
        boxes.append(("col", i, (cx - text_h / 2, y0 - 4 - tw, cx + text_h / 2, y0 - 4)))
    return {"font": font, "title_font": title_font, "title": title_text, "cell": cell, "x0": x0, "y0": y0,
            "every": every, "boxes": boxes, "bar_h": bar_h}


def matrix_tile(matrix: torch.Tensor, labels: list[str], size: tuple[int, int], title: str, *,
                lower_only: bool = True) -> torch.Tensor:
    """An ``[L, L]`` matrix as a heat map with ``labels`` on both axes, a title and a colour bar (0 to the matrix's
    maximum), fitted into ``size`` (H, W); with many tokens the labels shrink, then every k-th is drawn.
    ``lower_only``: the cells above the diagonal are left blank (CLIP's causal T, and S); T5's T is drawn whole."""
    h, w = size
    n = matrix.shape[0]
    if len(labels) != n:
        raise ValueError(f"matrix has {n} rows but {len(labels)} labels were given")
    lay = matrix_layout(n, labels, size, title)
    font, cell, x0, y0 = lay["font"], lay["cell"], lay["x0"], lay["y0"]
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    img.paste(_to_pil(matrix_pixels(matrix, cell, lower_only)), (x0, y0))
    draw.text((4, 2), lay["title"], fill=(0, 0, 0), font=lay["title_font"])
    for kind, i, (bx0, by0, bx1, by1) in lay["boxes"]:
        text = labels[i]
        if kind == "row":
            tb = draw.textbbox((0, 0), text, font=font)
            draw.text((bx0, (by0 + by1) / 2 - (tb[3] - tb[1]) / 2 - tb[1]), text, fill=(0, 0, 0), font=font)
        else:           # column labels: drawn on a small image and rotated to read bottom-up
            tb = draw.textbbox((0, 0), text, font=font)
            col = Image.new("RGB", (tb[2] - tb[0] + 2, tb[3] + 2), (255, 255, 255))
            ImageDraw.Draw(col).text((-tb[0], 0), text, fill=(0, 0, 0), font=font)
            col = col.rotate(90, expand=True)
            img.paste(col, (int((bx0 + bx1) / 2 - col.size[0] / 2), int(by1 - col.size[1])))
    grid_px = cell * n
    draw.rectangle((x0 - 1, y0 - 1, x0 + grid_px, y0 + grid_px), outline=(0, 0, 0))
    draw_colorbar(img, 0.0, float(matrix.float().clamp_min(0).max()), x0=x0, x1=min(w, x0 + max(grid_px, w // 2)))
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
    title_font, title = fit_text(draw, title, w - 8, font.size)
    draw.text((4, 2), title, fill=(0, 0, 0), font=title_font)
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
