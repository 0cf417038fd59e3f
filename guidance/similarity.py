"""Cross-attention similarity between token maps: C and T-SAM's row-normalised S (T-SAM §3.3, Eq. for S)."""
from __future__ import annotations

import torch

from .smoothing import smooth_maps


def cosine_matrix(maps: torch.Tensor, smooth: bool = True) -> torch.Tensor:
    """C_ij = cos(vec(G∗A_i), vec(G∗A_j)) for token maps ``maps`` ``[..., L, h, w]``; returns ``[..., L, L]``.

    G is the official 3×3 Gaussian (``smooth=True``, as T-SAM's ``do_smoothing``).
    """
    a = smooth_maps(maps) if smooth else maps
    v = a.flatten(-2)                                                  # [..., L, h·w]
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v @ v.transpose(-1, -2)


def tsam_similarity(maps: torch.Tensor, smooth: bool = True, *, causal: bool = True) -> torch.Tensor:
    """S: the lower triangle of C (diagonal included, upper = 0), each row divided by its sum; the whole of C with
    ``causal=False`` (beside a bidirectional T, T5's).

    maps: ``[..., L, h, w]`` for the prompt tokens 1..L. Returns ``[..., L, L]``, rows summing to 1, comparable
    with the text-side target T̂ (T-SAM's loss compares the two row by row).
    """
    c = cosine_matrix(maps, smooth)
    c = c.tril() if causal else c
    return c / c.sum(dim=-1, keepdim=True).clamp_min(1e-12)
