"""T-SAM's objective: make the image-side similarity of token maps follow the text self-attention T̂.

Kim, Esmaeili & Qiu, "Text Embedding is Not All You Need", CVPR 2025 (arXiv 2411.15236). Two variants, as in the
released code (``t-sam-diffusion/code``, ``pipeline_stable_diffusion_x_2.py``):

* ``paper`` (default): the paper's L1 formula, code path ``_compute_self_attn_loss_cos_attn_like`` with
  ``loss_type='abs_loss'``, ``cos1_or_cos2='cos2'``.
* ``cosine``: the released default (``attn_like_loss: null`` → ``_compute_self_attn_loss_cos``).

Maps are the raw, head- and layer-averaged cross-attention probabilities of the prompt tokens 1..L at one level,
each smoothed with the official 3×3 Gaussian before comparison (``do_smoothing: true``).

T comes from CLIP, a causal encoder, so the paper compares each row's entries j ≤ i. With T5 (Flux, SD3 on a DiT)
T is bidirectional: ``causal=False`` compares whole rows, keeping the paper's rule that a row weighs by the number
of entries it compares — ``(i+1)/L`` (paper) or ``0.2·i`` (released) causally, so ``1`` and ``0.2·(L−1)`` for
every row of a full one (row 0 is no longer trivially equal).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .method import GradientGuidance
from .similarity import cosine_with_unit_diagonal, tsam_similarity

VARIANTS = ("paper", "cosine")


def tsam_loss_paper(maps: torch.Tensor, target: torch.Tensor, *, row_weight: float = 1.0,
                    causal: bool = True) -> torch.Tensor:
    """Paper formula: L = Σ_{i=1}^{L−1} (row_weight·(i+1)/L) · Σ_{j≤i} |T̂_ij − S_ij| with S = C / rowsum(C).

    i is 0-based (the paper's 1-based i over s = L/row_weight). maps ``[B, L, h, w]``, target T̂ ``[L, L]``;
    returns the loss per sample ``[B]``. ``causal=False`` (a bidirectional T): Σ over every row i and every j, each
    row weighing ``row_weight`` (its L entries over L).
    """
    s = tsam_similarity(maps, causal=causal)
    n = maps.shape[1]
    rows = torch.arange(n, device=maps.device, dtype=s.dtype)
    if causal:
        weights = row_weight * (rows + 1) / n
        weights[0] = 0.0                                                 # row 0 is skipped (trivially 0)
        compared = torch.ones(n, n, dtype=torch.bool, device=maps.device).tril()
    else:
        weights = torch.full_like(rows, row_weight)
        compared = torch.ones(n, n, dtype=torch.bool, device=maps.device)
    diff = ((target.to(s) - s).abs() * compared).sum(dim=-1)             # [B, L]
    return (diff * weights).sum(dim=-1)


def tsam_loss_cosine(maps: torch.Tensor, target: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """Released default: L = Σ_{i=1}^{L−1} 0.2·i·(1 − cos(T̂[i, :i], C[i, :i])) over strictly-lower entries.

    maps ``[B, L, h, w]``, target ``[L, L]``; returns ``[B]``. Zero-padding the entries j ≥ i leaves each row's
    cosine unchanged, so rows are compared in one batched call. ``causal=False``: every row over its entries j ≠ i,
    each weighing 0.2·(L−1).
    """
    c = cosine_with_unit_diagonal(maps, causal=causal)
    n = maps.shape[1]
    ones = torch.ones(n, n, dtype=torch.bool, device=maps.device)
    compared = ones.tril(-1) if causal else ones & ~torch.eye(n, dtype=torch.bool, device=maps.device)
    t = (target.to(c) * compared).expand_as(c)
    cos = F.cosine_similarity(t, c * compared, dim=-1)                   # [B, L]; causal row 0 is 0·… (weight 0)
    weights = 0.2 * compared.sum(dim=-1).to(c.dtype)                     # 0.2·(entries compared): 0.2·i causally
    return ((1 - cos) * weights).sum(dim=-1)


def tsam_loss(maps: torch.Tensor, target: torch.Tensor, variant: str = "paper", *, row_weight: float = 1.0,
              causal: bool = True) -> torch.Tensor:
    """Dispatch on ``variant`` (``paper`` | ``cosine``); see the two functions above."""
    if maps.shape[1] != target.shape[0]:
        raise ValueError(f"T-SAM: {maps.shape[1]} token maps but T̂ is {tuple(target.shape)}")
    if variant == "paper":
        return tsam_loss_paper(maps, target, row_weight=row_weight, causal=causal)
    if variant == "cosine":
        return tsam_loss_cosine(maps, target, causal=causal)
    raise ValueError(f"loss: '{variant}' is not a T-SAM loss; choose one of {', '.join(VARIANTS)}")


def tsam_threshold(num_tokens: int, *, per_token: float = 0.14) -> float:
    """Refinement threshold ``0.14·(L−1)``: the official dict {5: 0.14·4, 6: 0.14·5, 7: 0.14·6} for any L ≥ 2."""
    return per_token * (num_tokens - 1)


REFINE_MODES = ("official", "until_threshold", "off")


class TSAMObjective:
    """T-SAM's loss on the prompt tokens 1..L of maps at one level (``name``/``level``/``loss`` protocol)."""

    name = "T-SAM"
    min_map_side = 2                    # the official 3×3 smoothing reflect-pads by one pixel

    def __init__(self, target: torch.Tensor, *, eos_index: int, variant: str = "paper", row_weight: float = 1.0,
                 level: int = 32, context: torch.Tensor | None = None, first: int = 1, causal: bool = True):
        if variant not in VARIANTS:
            raise ValueError(f"loss: '{variant}' is not a T-SAM loss; choose one of {', '.join(VARIANTS)}")
        self.target, self.eos_index, self.variant = target.float(), eos_index, variant
        self.row_weight, self.level, self.first, self.causal = row_weight, level, first, causal
        self.context = context  # the encoded prompt T came from; the sampler checks the positive prompt against it

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.shape[1] < self.eos_index:
            raise ValueError(f"T-SAM: the maps have {maps.shape[1]} tokens, the prompt needs {self.eos_index}")
        return tsam_loss(maps[:, self.first:self.eos_index], self.target.to(maps.device), self.variant,
                         row_weight=self.row_weight, causal=self.causal)


def tsam_guidance(target: torch.Tensor, *, eos_index: int, prompt: str = "", variant: str = "paper",
                  strength: float = 1.0, scale: float = 5.0, guided_paper_steps: float = 30,
                  refine: str = "official", threshold_per_token: float = 0.14, level: int = 32,
                  row_weight: float = 1.0, context: torch.Tensor | None = None, first: int = 1,
                  causal: bool = True):
    """T-SAM with the released configuration (config.yaml): α = 5·√linspace(1, 0.5), updates at i < 30 of 50,
    refinement at steps 0/10/20 with threshold 0.14·(L−1) — up to 30 iterations, giving up at iteration 20 if still
    above it (``official``), or stopping once below it (``until_threshold``), or none (``off``). ``first`` …
    ``eos_index``: the prompt's tokens in the context (CLIP: 1 … eos−1); ``causal``: T from a causal encoder."""
    n = eos_index - first
    if n < 2:
        raise ValueError(f"text_attention: T-SAM compares pairs of prompt tokens, but '{prompt}' has {n} token; "
                         "use a prompt of at least two tokens")
    if refine not in REFINE_MODES:
        raise ValueError(f"refine: '{refine}' is not one of {', '.join(REFINE_MODES)}")
    threshold = tsam_threshold(n, per_token=threshold_per_token)
    refine_steps = () if refine == "off" else tuple((k, threshold) for k in (0.0, 10.0, 20.0))
    return GradientGuidance(
        objective=TSAMObjective(target, eos_index=eos_index, variant=variant, row_weight=row_weight,
                                level=level, context=context, first=first, causal=causal),
        guided_paper_steps=guided_paper_steps, scale=scale, decay=True, strength=strength,
        refine_paper_thresholds=refine_steps, max_iters=30 if refine != "off" else 0,
        stop_below=refine == "until_threshold", give_up_at=20 if refine == "official" else None)
