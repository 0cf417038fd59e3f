"""What a guidance node hands the sampler (the ``GUIDANCE`` type): a gradient guidance (an objective with its
schedule, run by the host's guided sampling) or an attention edit, whose ``begin(info, layers)`` gives the state of
one sampling run (:class:`EditRun`), whose ``end(stamp)`` is the immutable :class:`~.engine.GuidanceRecord` of it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from .attention import EditMethod, LayerKey
from .engine import MAX_UPDATE_RATIO, GuidanceLog, GuidanceRecord, StepRecord
from .records import RunInfo, RunStamp
from .schedule import Plan, make_plan


class Objective(Protocol):
    """A loss on the positive prompt's cross-attention maps at one level."""

    name: str
    level: int                          # image pixels per map pixel of the maps it reads
    min_map_side: int                   # the smallest map side the loss works on (checked before sampling)
    context: torch.Tensor | None        # the encoded prompt its token positions belong to (None: not checked)

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        """maps ``[B, T, h, w]`` (head- and layer-averaged probabilities) → loss per sample ``[B]``."""


class MeanObjective:
    """The mean of several objectives' losses on the same maps: a method read through both text encoders of a
    context that holds two (SD3: CLIP-L/G's tokens, then T5's), each objective on its own encoder's tokens —
    gsn-factory's rule when it does not average the maps (``average_t5_clip = False``: ``(loss_clip + loss_t5) / 2``).
    The first objective's prompt is the one checked against the sampler's."""

    def __init__(self, objectives: list[Objective]):
        if len(objectives) < 2 or len({o.level for o in objectives}) != 1:
            raise ValueError("MeanObjective needs at least two objectives at one level")
        self.objectives = list(objectives)
        self.name, self.level = objectives[0].name, objectives[0].level
        self.min_map_side = max(o.min_map_side for o in objectives)
        self.context = objectives[0].context

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        """maps ``[B, T, h, w]`` → ``mean_k L_k(maps)`` ``[B]``."""
        return torch.stack([o.loss(maps) for o in self.objectives]).mean(dim=0)


@dataclass(frozen=True, kw_only=True)
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
    fast: bool = False                  # take loss and gradient from the sampler's own evaluation (no refinement)
    dit_blocks: str = "all"             # on a DiT: "all" joint blocks, or Flux's "double"-stream ones only

    def plan(self, total_steps: int) -> Plan:
        return make_plan(total_steps, self.guided_paper_steps, self.scale, decay=self.decay, strength=self.strength,
                         refine_paper_thresholds=dict(self.refine_paper_thresholds), max_iters=self.max_iters,
                         stop_below=self.stop_below, give_up_at=self.give_up_at, enter_above=self.enter_above)

    @property
    def name(self) -> str:
        return self.objective.name

    @property
    def level(self) -> int:
        """The level the objective reads (image pixels per map pixel); the Guided KSampler's maps come from it."""
        return self.objective.level

    @property
    def map_user(self) -> Objective:
        """What reads the maps at ``level`` (its ``name`` and ``min_map_side``, checked before sampling)."""
        return self.objective

    @property
    def context(self) -> torch.Tensor | None:
        """The encoded prompt the objective's token positions belong to (None: not checked)."""
        return self.objective.context


@dataclass
class EditRun:
    """One sampling run of an attention edit: the editor bound to the run's layers, and its log."""

    guidance: AttentionEditGuidance
    info: RunInfo
    editors: tuple = ()
    observers: tuple = ()

    def end(self, stamp: RunStamp) -> GuidanceRecord:
        log = GuidanceLog(self.guidance.name, self.info.sampler, "attention edit", self.info.total_steps)
        sigmas = self.info.sigmas
        for editor in self.editors:                              # Attention Regulation's own loss per step
            for step, pairs in sorted(editor.step_losses().items()):
                before, after = (sum(v) / len(v) for v in zip(*pairs))
                log.steps.append(StepRecord(step, float(sigmas[min(step, len(sigmas) - 1)]), 0.0,
                                            [torch.tensor([before]), torch.tensor([after])]))
        return log.finish(stamp)


@dataclass(frozen=True, kw_only=True)
class AttentionEditGuidance:
    """A method that changes the attention itself (Attention Regulation, Attention Modulation), no latent steps.

    ``edit`` changes the attention of the layers at ``level`` (image pixels per map pixel; None: every attention
    layer); ``self_settings`` (Modulation) sets the self-attention temperature.
    ``context`` is the encoded prompt the token positions belong to, checked against the positive prompt.
    """

    name: str
    edit: EditMethod | None
    level: int | None = 32
    self_settings: object | None = None
    context: torch.Tensor | None = None
    dit_blocks: str = "all"             # on a DiT: the edit changes "all" joint blocks, or Flux's "double" ones only

    @property
    def map_user(self) -> EditMethod | None:
        """What reads the maps at ``level`` (its ``name`` and ``min_map_side``, checked before sampling)."""
        return self.edit

    @property
    def edits_attention(self) -> bool:
        """Whether it changes cross-attention (another pack's opaque replace on its layers is then refused)."""
        return self.edit is not None

    def begin(self, info: RunInfo, layers: Mapping[LayerKey, int]) -> EditRun:
        editors = () if self.edit is None else (self.edit.for_run(frozenset(layers)),)
        return EditRun(self, info, editors)
