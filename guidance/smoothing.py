"""The 3×3 Gaussian smoothing of the official Attend-and-Excite and T-SAM code, reproduced exactly.

Their ``GaussianSmoothing(kernel_size=3, sigma=0.5)`` evaluates ``exp(-((x-μ)/(2σ))²)``, so the true Gaussian σ is
√2·0.5; the normalised 1-D taps are [0.211942, 0.576117, 0.211942]. The map is reflect-padded by one pixel and then
convolved without padding. This is not torchvision's ``gaussian_blur``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def official_taps(*, kernel_size: int = 3, sigma: float = 0.5, dtype=torch.float32) -> torch.Tensor:
    """1-D taps of the official kernel: ``exp(-((x-μ)/(2σ))²)`` normalised to sum 1."""
    mean = (kernel_size - 1) / 2
    x = torch.arange(kernel_size, dtype=torch.float64)
    g = torch.exp(-(((x - mean) / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    return (g / g.sum()).to(dtype)


def smooth_maps(maps: torch.Tensor, *, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Smooth every 2-D map of ``maps`` ``[..., h, w]`` with the official kernel (reflect pad, valid conv).

    Returns a tensor of the same shape. Maps need h, w > kernel_size // 2 (reflect padding's limit).
    """
    h, w = maps.shape[-2:]
    pad = kernel_size // 2
    if h <= pad or w <= pad:
        raise ValueError(f"level: the attention maps at this level are {h}×{w}, too small for the official "
                         f"{kernel_size}×{kernel_size} smoothing (each side must exceed {pad}); choose a finer level "
                         "(a smaller image divisor) or a larger image")
    taps = official_taps(kernel_size=kernel_size, sigma=sigma,
                         dtype=maps.dtype if maps.is_floating_point() else torch.float32)
    kernel = (taps[:, None] * taps[None, :]).to(maps.device)[None, None]          # [1, 1, k, k]
    flat = maps.reshape(-1, 1, h, w)
    out = F.conv2d(F.pad(flat, (pad, pad, pad, pad), mode="reflect"), kernel.to(flat.dtype))
    return out.reshape(maps.shape)
