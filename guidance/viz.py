"""Turning attention maps into images: colour maps, per-word maps, overlays and grids (pure torch).

Images follow ComfyUI's IMAGE layout: ``[H, W, 3]`` (or ``[N, H, W, 3]``) float in 0..1. Text labels are drawn
by the node layer (``nodes/host/render.py``); this module only computes pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokens import Word

# Polynomial fit of Google's "turbo" colour map (Mikhailov 2019), x in 0..1.
_TURBO = (
    (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
    (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
    (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
)


def colormap(x: torch.Tensor) -> torch.Tensor:
    """Map values in 0..1 ``[...]`` to turbo colours ``[..., 3]`` in 0..1."""
    x = x.float().clamp(0, 1)
    channels = []
    for coeffs in _TURBO:
        acc = torch.full_like(x, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = acc * x + c
        channels.append(acc)
    return torch.stack(channels, dim=-1).clamp(0, 1)


def normalize_each(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise every 2-D map of ``[..., h, w]`` to 0..1 (a constant map becomes 0)."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def resize_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[..., h, w]`` maps to ``size`` (H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=size, mode=mode, **kw)
    return out.reshape(*lead, *size)


def combine_sizes(per_size: list[torch.Tensor]) -> torch.Tensor:
    """Average maps recorded at several resolutions: each ``[B, T, h_i, w_i]`` is resized to the finest size."""
    finest = max(per_size, key=lambda m: m.shape[-1] * m.shape[-2])
    size = tuple(finest.shape[-2:])
    return torch.stack([m if tuple(m.shape[-2:]) == size else resize_maps(m, size) for m in per_size]).mean(0)


def word_maps(maps: torch.Tensor, words: list[Word]) -> torch.Tensor:
    """Per-word maps: the mean of the word's token maps. maps ``[B, T, h, w]`` → ``[B, len(words), h, w]``."""
    t = maps.shape[1]
    for w in words:
        if max(w.positions) >= t:
            raise ValueError(f"word '{w.label}' sits at token {max(w.positions)}, but the attention maps have only "
                             f"{t} tokens; were they recorded with a different prompt?")
    return torch.stack([maps[:, list(w.positions)].mean(dim=1) for w in words], dim=1)


def heat_tiles(maps: torch.Tensor, size: tuple[int, int], background: torch.Tensor | None = None,
               alpha: tuple[float, float] = (0.15, 0.85)) -> torch.Tensor:
    """Heat-map tiles ``[..., H, W, 3]`` for maps ``[..., h, w]``: bilinear to ``size``, min-max per map, turbo.

    Over a ``background`` ``[..., H, W, 3]`` (broadcastable) the colour's weight grows with the value, from
    ``alpha[0]`` (coldest) to ``alpha[1]`` (hottest), and the background is shown as mid-range grey: hot spots keep
    their colour on dark and on bright images alike (a constant blend over a dark image turns red into purple-brown),
    cold regions show the image."""
    value = normalize_each(resize_maps(maps, size))
    heat = colormap(value)
    if background is None:
        return heat
    grey = (background.float() * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    grey = (0.25 + 0.5 * grey).expand(*grey.shape[:-1], 3)
    weight = (alpha[0] + (alpha[1] - alpha[0]) * value).unsqueeze(-1)
    return (weight * heat + (1 - weight) * grey).clamp(0, 1)


def colorbar(width: int, height: int) -> torch.Tensor:
    """A horizontal turbo colour bar ``[height, width, 3]``: coldest (0) on the left, hottest (1) on the right."""
    ramp = torch.linspace(0, 1, max(width, 1))
    return colormap(ramp)[None].expand(height, -1, -1).clone()


def matrix_pixels(matrix: torch.Tensor, cell: int, lower_only: bool = True) -> torch.Tensor:
    """An ``[L, L]`` matrix as ``[L·cell, L·cell, 3]`` pixels (nearest, turbo), scaled by its maximum so the
    strongest entry is the hottest. With ``lower_only`` the cells above the diagonal (undefined for the causal T
    and for S) are white."""
    m = matrix.float().clamp_min(0)
    m = m / m.max().clamp_min(1e-12)
    px = colormap(m)                                                   # [L, L, 3]
    if lower_only:
        upper = torch.ones_like(m, dtype=torch.bool).triu(1)
        px[upper] = 1.0
    return px.repeat_interleave(cell, 0).repeat_interleave(cell, 1)


def grid(tiles: torch.Tensor, columns: int, *, pad: int = 4, fill: float = 1.0) -> torch.Tensor:
    """Arrange ``[n, H, W, 3]`` tiles row by row in ``columns`` columns with ``pad`` pixels between them."""
    n, h, w, c = tiles.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    canvas = torch.full((rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad, c), fill, dtype=tiles.dtype)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = r * (h + pad), col * (w + pad)
        canvas[y:y + h, x:x + w] = tiles[i]
    return canvas
