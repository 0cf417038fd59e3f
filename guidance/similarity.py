"""Cross-attention similarity between token maps: C and T-SAM's row-normalised S (T-SAM §3.3, Eq. for S)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .smoothing import smooth_maps


def cosine_with_unit_diagonal(maps: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """C: ``C_ij = cos(vec(G∗A_i), vec(G∗A_j))`` for j < i, 1 on the diagonal, 0 above (the official ``torch.eye``
    start and ``F.cosine_similarity``); with ``causal=False`` for every j ≠ i. G is the official 3×3 Gaussian (T-SAM's
    ``do_smoothing``). maps ``[B, L, h, w]`` → ``[B, L, L]``."""
    v = smooth_maps(maps).flatten(-2)                                    # [B, L, h·w]
    cos = F.cosine_similarity(v[:, :, None, :], v[:, None, :, :], dim=-1)  # [B, L, L]
    eye = torch.eye(maps.shape[1], dtype=cos.dtype, device=cos.device)
    return cos.tril(-1) + eye if causal else cos * (1 - eye) + eye


def tsam_similarity(maps: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """S = C / rowsum(C) (:func:`cosine_with_unit_diagonal`): the lower triangle, each row summing to 1; the whole
    of C with ``causal=False`` (beside a bidirectional T, T5's). The S T-SAM's loss compares with T̂ row by row, and
    the one Visualize Attention draws.

    maps: ``[B, L, h, w]`` for the prompt tokens 1..L. Returns ``[B, L, L]``.
    """
    c = cosine_with_unit_diagonal(maps, causal=causal)
    return c / c.sum(dim=-1, keepdim=True)
