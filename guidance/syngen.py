"""SynGen: bind each modifier to its noun through their attention maps (Rassin et al., NeurIPS 2023, Eq. 1–3).

From the official ``RoyiRa/Linguistic-Binding-in-Diffusion-Models`` (``compute_loss.py``,
``SynGenDiffusionPipeline._attribution_loss``). Every token map of the positive prompt (mean over heads and layers at
16×16 for SD1.x) is a distribution over pixels (``torch.distributions.Categorical(probs=map)``: normalised by its sum,
log-probabilities of the probabilities clamped to [eps, 1 − eps]); ``dist`` is the symmetric KL divergence.

For each group S = [m₁ … m_k, n] (the noun last; each element one word, i.e. one or more wordpieces) and each
modifier m of it: ``loss += dist(m, n) − ½[mean_u dist(n, u) + mean_u dist(m, u)]`` where u runs over every prompt
token outside S; a multi-wordpiece word takes the max over its pieces. A group without modifiers adds only the noun's
negative term. Differences from the official code, on purpose: groups are computed per prompt (the official pipeline
caches them across prompts) and every sample of a batch keeps its own update (the official loop keeps only the last).
"""
from __future__ import annotations

import torch

from .method import GradientGuidance

Group = list[tuple[int, ...]]   # words (token positions each) of one entity: modifiers first, the noun last


def log_distributions(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, logits) of ``Categorical(probs=map)`` for maps ``[..., h, w]``: each ``[..., h·w]``."""
    flat = maps.flatten(-2)
    probs = flat / flat.sum(dim=-1, keepdim=True)
    eps = torch.finfo(probs.dtype).eps
    return probs, probs.clamp(eps, 1 - eps).log()


def symmetric_kl(maps: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = ½[KL(P_i‖P_j) + KL(P_j‖P_i)] = ½ Σ_x (p_i − p_j)(log p_i − log p_j)`` (SynGen Eq. 2's ``dist``)
    for the token maps ``[B, L, h, w]`` → ``[B, L, L]``.

    Computed term by term, as the official ``torch.distributions.kl_divergence`` does: every term is ≥ 0 and the
    diagonal is exactly 0. (Expanding the sums as ``Σ p log p − p·(log q)ᵀ`` subtracts two numbers ≈ −log(h·w)
    each, which costs ~1e-6 absolute in float32 — too much for a loss made of differences of such terms.)
    The ``[B, L, L, h·w]`` intermediate is 23 MB per sample at 75 tokens and 32×32 maps.
    """
    probs, logits = log_distributions(maps)                                   # [B, L, n]
    dp = probs[:, :, None, :] - probs[:, None, :, :]                          # [B, L(i), L(j), n]
    dl = logits[:, :, None, :] - logits[:, None, :, :]
    return 0.5 * (dp * dl).sum(-1)


def _word_distance(d: torch.Tensor, a: tuple[int, ...], b: tuple[int, ...]) -> torch.Tensor:
    """dist between two words: the max over their wordpiece pairs. d ``[B, T, T]`` → ``[B]``."""
    return d[:, list(a)][:, :, list(b)].flatten(1).max(dim=1).values


def _negative(d: torch.Tensor, word: tuple[int, ...], outside: list[int]) -> torch.Tensor:
    """−mean_u dist(word, u) over the outside tokens (each u a single token), max over the word's pieces."""
    if not outside:
        return d.new_zeros(d.shape[0])
    per_u = d[:, list(word)][:, :, outside].max(dim=1).values                # [B, |U|]
    return -per_u.mean(dim=1)


def syngen_loss(maps: torch.Tensor, groups: list[Group], prompt_positions: list[int]) -> torch.Tensor:
    """SynGen's loss per sample ``[B]`` for maps ``[B, T, h, w]`` (all tokens); ``prompt_positions`` are the
    prompt's token positions (1 … eos−1), the pool of "outside" tokens."""
    if not groups:
        raise ValueError("groups: SynGen needs at least one group of a modifier and its noun")
    d = torch.zeros(maps.shape[0], maps.shape[1], maps.shape[1], dtype=maps.dtype, device=maps.device)
    pos = list(prompt_positions)
    d[:, pos[0]:pos[-1] + 1, pos[0]:pos[-1] + 1] = symmetric_kl(maps[:, pos[0]:pos[-1] + 1])
    loss = maps.new_zeros(maps.shape[0])
    for group in groups:
        noun, modifiers = group[-1], group[:-1]
        inside = {p for word in group for p in word}
        outside = [p for p in pos if p not in inside]
        if not modifiers:
            loss = loss + _negative(d, noun, outside)
            continue
        for m in modifiers:
            positive = _word_distance(d, m, noun)
            negative = 0.5 * (_negative(d, m, outside) + _negative(d, noun, outside))
            loss = loss + positive + negative
    return loss


class SynGenObjective:
    """SynGen's loss on the maps at one level (``name``/``level``/``loss`` protocol)."""

    name = "SynGen"
    min_map_side = 1

    def __init__(self, groups: list[Group], *, eos_index: int, level: int = 32, context: torch.Tensor | None = None,
                 first: int = 1):
        if not groups:
            raise ValueError("groups: SynGen needs at least one group of a modifier and its noun")
        self.groups = [[tuple(w) for w in g] for g in groups]
        self.eos_index, self.level, self.context, self.first = eos_index, level, context, first

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        return syngen_loss(maps, self.groups, list(range(self.first, self.eos_index)))


def syngen_guidance(groups: list[Group], *, eos_index: int, strength: float = 1.0, scale: float = 20.0,
                    guided_paper_steps: float = 25, level: int = 32, context: torch.Tensor | None = None,
                    first: int = 1):
    """SynGen with the official configuration (run.py): constant step 20, updates at i < 25 of 50, no refinement.
    ``first``/``eos_index``: the prompt's tokens in the context (CLIP: 1 … eos−1; T5 on a DiT: its own span)."""
    return GradientGuidance(objective=SynGenObjective(groups, eos_index=eos_index, level=level, context=context,
                                                      first=first),
                            guided_paper_steps=guided_paper_steps, scale=scale, decay=False, strength=strength)
