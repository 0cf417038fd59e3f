"""Attend-and-Excite: excite the most neglected subject token (Chefer et al., SIGGRAPH 2023, Eq. 1–3).

From the official ``yuval-alaluf/Attend-and-Excite`` (``_compute_max_attention_per_index``, ``_compute_loss``) and
the diffusers pipeline: the positive prompt's maps A (mean over heads and layers at 16×16 for SD1.x at 512 px) are
renormalised over tokens with a sharp softmax ``Â = softmax(100·A[..., 1:last])``, each subject's map is smoothed
with the official 3×3 Gaussian, and ``L = max_s max(0, 1 − max_pixels(G∗Â_s))``.

``last`` is −1 in the official SD1 code and in diffusers: the softmax also covers eos and the padding tokens
(``normalize_eot = False``). With ``normalize_eot = True`` (the official repo's SD 2.1 mode, adopted after its
authors found that padding in the softmax broke convergence; gsn-factory's ``drop_eot`` on SD3) it covers only the
prompt's own tokens. :func:`drops_padding` says which the references use for each text encoder.

On a DiT the encoder's tokens are a span ``[first, end)`` of the model's context (Flux: T5's, from 0, no bos; SD3:
T5's after the 77 CLIP tokens, or CLIP's); the same rule applies within the span: ``A[..., first:end−1]``, or
``A[..., first:eos]`` with ``normalize_eot``. The UNet case is ``first = 1``, ``end = T``.
"""
from __future__ import annotations

import torch

from .method import GradientGuidance
from .smoothing import smooth_maps

#: text encoders whose padding the references leave out of A&E's softmax: SD2.x's OpenCLIP-H (the official repo's
#: SD 2.1 mode) and T5 (gsn-factory on SD3; Flux's 256-token context is mostly padding)
PADDING_DROPPED = frozenset({"clip_h", "t5xxl"})


def drops_padding(encoder: str) -> bool:
    """Whether A&E's softmax leaves the padding out (``normalize_eot``) for a context from ``encoder``, as the
    references do: the official SD1 code (and diffusers) keep it for CLIP-L, the official SD 2.1 mode drops it for
    OpenCLIP-H, gsn-factory drops it for T5. CLIP-G (SDXL, SD3) follows CLIP-L, as no reference says otherwise."""
    return encoder in PADDING_DROPPED


def subject_maxima(maps: torch.Tensor, subjects: list[tuple[int, ...]], eos_index: int,
                   normalize_eot: bool = False, *, first: int = 1, end: int | None = None) -> torch.Tensor:
    """max over pixels of the smoothed, token-softmaxed map of each subject: maps ``[B, T, h, w]`` → ``[B, S]``.

    ``subjects`` are the subjects' token positions in the context (bos = 0 for CLIP); a subject made of several
    wordpieces counts as present through its strongest piece (max over its pieces). ``[first, end)``: the encoder's
    span of the context (module docstring); ``eos_index`` is a context position too.
    """
    last = eos_index if normalize_eot else (maps.shape[1] if end is None else end) - 1
    a = torch.softmax(100.0 * maps[:, first:last], dim=1)                # [B, T', h, w]; token t is column t − first
    out = []
    for positions in subjects:
        if min(positions) < first or max(positions) >= last:
            raise ValueError(f"subject token positions {positions} are outside the prompt ({first}..{last - 1})")
        piece_max = smooth_maps(a[:, [p - first for p in positions]]).flatten(-2).max(dim=-1).values  # [B, pieces]
        out.append(piece_max.max(dim=-1).values)
    return torch.stack(out, dim=1)


def attend_excite_loss(maps: torch.Tensor, subjects: list[tuple[int, ...]], eos_index: int,
                       normalize_eot: bool = False, *, first: int = 1, end: int | None = None) -> torch.Tensor:
    """``L = max_s max(0, 1 − max(G∗Â_s))`` per sample ``[B]`` (the worst-attended subject decides)."""
    return (1.0 - subject_maxima(maps, subjects, eos_index, normalize_eot, first=first, end=end)
            ).clamp_min(0).max(dim=1).values


class AttendExciteObjective:
    """Attend-and-Excite's loss on the maps at one level (``name``/``level``/``loss`` protocol)."""

    name = "Attend-and-Excite"
    min_map_side = 2                    # the official 3×3 smoothing reflect-pads by one pixel

    def __init__(self, subjects: list[tuple[int, ...]], *, eos_index: int, normalize_eot: bool = False,
                 level: int = 32, context: torch.Tensor | None = None, first: int = 1, end: int | None = None):
        if not subjects:
            raise ValueError("subjects: Attend-and-Excite needs at least one subject word")
        self.subjects, self.eos_index, self.normalize_eot = [tuple(s) for s in subjects], eos_index, normalize_eot
        self.level, self.context, self.first, self.end = level, context, first, end

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        return attend_excite_loss(maps, self.subjects, self.eos_index, self.normalize_eot, first=self.first,
                                  end=self.end)


def attend_excite_guidance(subjects: list[tuple[int, ...]], *, eos_index: int, normalize_eot: bool = False,
                           strength: float = 1.0, scale: float = 20.0, guided_paper_steps: float = 25,
                           thresholds: dict[float, float] | None = None, max_iters: int = 20, level: int = 32,
                           context: torch.Tensor | None = None, first: int = 1, end: int | None = None):
    """A&E with the official configuration (config.py): α = 20·√linspace(1, 0.5), updates at i < 25 of 50,
    refinement at steps {0: 0.05, 10: 0.5, 20: 0.8} (loss target 1 − thr) with at most 20 iterations, entered only
    when the loss is above the target."""
    thresholds = {0: 0.05, 10: 0.5, 20: 0.8} if thresholds is None else thresholds
    return GradientGuidance(
        objective=AttendExciteObjective(subjects, eos_index=eos_index, normalize_eot=normalize_eot, level=level,
                                        context=context, first=first, end=end),
        guided_paper_steps=guided_paper_steps, scale=scale, decay=True, strength=strength,
        refine_paper_thresholds=tuple((k, max(0.0, 1.0 - t)) for k, t in sorted(thresholds.items())),
        max_iters=max_iters, stop_below=True, enter_above=True)
