"""Confidence intervals for prompt-set comparisons: a bootstrap over prompts (pure numpy).

Images of one prompt are not independent (same words, same failure), so the unit of resampling is the prompt: each
prompt contributes the mean of its images' scores, and the interval comes from resampling prompts with replacement.
For two methods run on the same prompts and seeds, :func:`paired_bootstrap_ci` resamples prompts once for both,
which is the interval of the *difference* (far narrower than comparing two separate intervals).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(per_prompt: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean over prompts and the percentile bootstrap interval at ``level``."""
    x = np.asarray(per_prompt, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"per_prompt must be a non-empty 1-D sequence of numbers, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a − b), low, high)`` for per-prompt scores of two methods on the same prompts (same order)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same prompts, got {x.shape} and {y.shape}")
    return bootstrap_ci(x - y, resamples=resamples, level=level, seed=seed)


def fmt_ci(mean: float, low: float, high: float, *, percent: bool = True) -> str:
    """``"42.0 [36.5, 47.5]"`` (in percent by default)."""
    k = 100.0 if percent else 1.0
    return f"{k * mean:.1f} [{k * low:.1f}, {k * high:.1f}]"
