"""What a gradient-guidance node hands the sampler (the ``GUIDANCE`` type): an objective plus its schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .schedule import Plan, make_plan


class Objective(Protocol):
    """A loss on the positive prompt's cross-attention maps at one level."""

    name: str
    downsample: int                     # latent pixels per map pixel of the maps it reads

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        """maps ``[B, T, h, w]`` (head- and layer-averaged probabilities) → loss per sample ``[B]``."""


@dataclass(frozen=True)
class GradientGuidance:
    """An objective with the paper's 50-step schedule; :meth:`plan` scales it to a run."""

    objective: Objective
    guided_paper_steps: float           # latent updates at paper steps i < this (of 50)
    scale: float                        # step size scale factor
    decay: bool = True                  # α_i = scale·√(1 − 0.5 i/N) (else constant)
    strength: float = 1.0               # multiplies every step size; 0 measures the loss without updating
    refine_paper_thresholds: tuple[tuple[float, float], ...] = ()
    max_iters: int = 0
    stop_below: bool = True
    give_up_at: int | None = None
    enter_above: bool = False

    def plan(self, total_steps: int) -> Plan:
        return make_plan(total_steps, self.guided_paper_steps, self.scale, self.decay, self.strength,
                         dict(self.refine_paper_thresholds), self.max_iters, self.stop_below, self.give_up_at,
                         self.enter_above)
