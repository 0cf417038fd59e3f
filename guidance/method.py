"""What a gradient-guidance node hands the sampler (the ``GUIDANCE`` type): an objective plus its schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .engine import MAX_UPDATE_RATIO
from .schedule import Plan, make_plan


class Editor(Protocol):
    name: str

    def fresh(self) -> "Editor": ...


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
    max_update_ratio: float = MAX_UPDATE_RATIO    # runaway bound on a step's change / the latent's RMS (inf: off)

    def plan(self, total_steps: int) -> Plan:
        return make_plan(total_steps, self.guided_paper_steps, self.scale, self.decay, self.strength,
                         dict(self.refine_paper_thresholds), self.max_iters, self.stop_below, self.give_up_at,
                         self.enter_above)

    @property
    def name(self) -> str:
        return self.objective.name

    @property
    def capture_downsample(self) -> int:
        return self.objective.downsample


@dataclass(frozen=True)
class AttentionEditGuidance:
    """A method that changes the attention itself (Attention Regulation, Attention Modulation), no latent steps.

    ``cross_editor`` edits the cross-attention of the layers at ``cross_downsample`` (latent pixels per map pixel;
    None: every cross-attention layer); ``self_settings`` (Modulation) sets the self-attention temperature.
    ``context`` is the encoded prompt the token positions belong to, checked against the positive prompt.
    """

    name: str
    cross_editor: Editor | None
    cross_downsample: int | None = 4
    self_settings: object | None = None
    context: torch.Tensor | None = None

    @property
    def capture_downsample(self) -> int:
        return 4 if self.cross_downsample is None else self.cross_downsample
