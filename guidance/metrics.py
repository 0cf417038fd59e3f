"""Attention metrics of a finished run, for comparing methods on prompt sets (no image model needed).

Each reads the positive prompt's head-averaged cross-attention maps ``[B, T, h, w]`` (a run's mean at one level) and
returns one number per sample ``[B]``:

* :func:`weakest_subject_attention` — Attend-and-Excite's quantity (Chefer et al. 2023, Eq. 1–3): the smallest,
  over subjects, of the peak of the subject's smoothed, token-softmaxed map; A&E's loss is 1 minus it.
* :func:`modifier_noun_overlap` — how much each modifier's map lies where its noun's does: the histogram
  intersection ``Σ_pixels min(Â_m, Â_n)`` of the two maps normalised over pixels (1: the same map; 0: disjoint),
  mean over a group's modifier–noun pairs and over groups. SynGen (Rassin et al. 2023, Eq. 2) pulls these together.
* :func:`noun_separation` — ``1 − Σ min(Â_i, Â_j)`` between different nouns' maps, mean over pairs (1: disjoint).
  SynGen's negative term and T-SAM's off-diagonal targets push these apart.
* :func:`ts_distance` — T-SAM's paper loss (Kim et al. 2025, Eq. 6) between the text self-attention T̂ and the
  maps' similarity S: 0 when the maps' similarity follows the text's syntax.
"""
from __future__ import annotations

from itertools import combinations

import torch

from .attend_excite import subject_maxima
from .tsam import tsam_loss_paper

Group = list[tuple[int, ...]]


def _pixel_distributions(maps: torch.Tensor, positions: tuple[int, ...]) -> torch.Tensor:
    """``[B, h·w]``: a word's map (the max over its wordpieces) normalised to sum 1 over pixels."""
    m = maps[:, list(positions)].amax(dim=1).flatten(1).clamp_min(0)
    return m / m.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _intersection(maps: torch.Tensor, a: tuple[int, ...], b: tuple[int, ...]) -> torch.Tensor:
    return torch.minimum(_pixel_distributions(maps, a), _pixel_distributions(maps, b)).sum(dim=1)


def weakest_subject_attention(maps: torch.Tensor, subjects: list[tuple[int, ...]], *, eos_index: int,
                              normalize_eot: bool = False, first: int = 1, end: int | None = None) -> torch.Tensor:
    """``min_s max(G∗softmax(100·A)_s)`` per sample (A&E Eq. 1–3; higher is better, 1 at most). ``first``/``end``:
    the prompt encoder's span of the context (a DiT's T5; see ``attend_excite.py``)."""
    if not subjects:
        raise ValueError("subjects: the weakest-subject attention needs at least one subject")
    return subject_maxima(maps, subjects, eos_index, normalize_eot, first=first, end=end).min(dim=1).values


def modifier_noun_overlap(maps: torch.Tensor, groups: list[Group]) -> torch.Tensor:
    """Mean histogram intersection of each modifier's map with its noun's (the noun is a group's last word)."""
    pairs = [(m, g[-1]) for g in groups for m in g[:-1]]
    if not pairs:
        raise ValueError("groups: the modifier–noun overlap needs a group with a modifier and its noun")
    return torch.stack([_intersection(maps, m, n) for m, n in pairs]).mean(dim=0)


def noun_separation(maps: torch.Tensor, nouns: list[tuple[int, ...]]) -> torch.Tensor:
    """Mean ``1 − histogram intersection`` over pairs of different nouns' maps."""
    pairs = list(combinations(nouns, 2))
    if not pairs:
        raise ValueError("nouns: the separation needs at least two nouns")
    return torch.stack([1.0 - _intersection(maps, a, b) for a, b in pairs]).mean(dim=0)


def ts_distance(maps: torch.Tensor, target: torch.Tensor, *, eos_index: int, first: int = 1,
                causal: bool = True) -> torch.Tensor:
    """T-SAM's paper loss between T̂ ``[L, L]`` and the similarity S of the prompt tokens' maps (first … eos − 1;
    ``causal=False``: whole rows, for T5's bidirectional T)."""
    return tsam_loss_paper(maps[:, first:eos_index], target.to(maps), causal=causal)
