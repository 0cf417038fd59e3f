"""Step schedules of the papers (written for 50 steps) scaled to the sampler's own step count.

The official pipelines index everything by the step number of a 50-step run: latent updates at i < 25 or 30, step
size ``scale·√linspace(1, 0.5)[i]``, refinement at i ∈ {0, 10, 20}. For a run of N steps, paper step k becomes
step ``round(k·N/50)`` and the step size at step i is ``scale·√(1 − 0.5·i/N)``: for N = 50 this is exactly the
official array (PNDM's 51 timesteps give ``linspace(1, 0.5, 51)[i] = 1 − 0.5·i/50``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

PAPER_STEPS = 50


def scale_step(paper_step: float, total: int, *, paper_total: int = PAPER_STEPS) -> int:
    """Paper step index → step index of an N-step run (round half up)."""
    return int(math.floor(paper_step * total / paper_total + 0.5))


def step_size(i: int, total: int, scale: float, *, decay: bool = True) -> float:
    """``scale·√(1 − 0.5·i/N)`` (A&E, T-SAM) or a constant ``scale`` (SynGen, ``decay=False``)."""
    return scale * math.sqrt(1.0 - 0.5 * i / total) if decay else scale


@dataclass(frozen=True)
class Refinement:
    """Iterative refinement at chosen steps: repeat the update at the same σ.

    ``thresholds`` maps each refinement step to its loss threshold (A&E: 1 − {0.05, 0.5, 0.8}; T-SAM: 0.14·(L−1)).
    ``stop_below``: stop once the loss is ≤ the threshold (A&E; T-SAM's "until threshold" option).
    ``give_up_at``: at this iteration, stop if the loss is still above the threshold (T-SAM's released code).
    ``enter_above``: only refine when the loss is above the threshold to begin with (A&E).
    """

    thresholds: tuple[tuple[int, float], ...]
    max_iters: int
    stop_below: bool = True
    give_up_at: int | None = None
    enter_above: bool = False

    @property
    def steps(self) -> frozenset[int]:
        return frozenset(step for step, _ in self.thresholds)

    def threshold_at(self, step: int) -> float:
        return dict(self.thresholds)[step]


@dataclass(frozen=True)
class Plan:
    """What happens at each step of one sampling run: which steps are guided, their step sizes, refinement."""

    total: int
    guided: frozenset[int]
    alphas: dict[int, float] = field(hash=False)
    refinement: Refinement | None = None

    def refine_at(self, i: int) -> bool:
        return self.refinement is not None and i in self.refinement.steps and i in self.guided


def make_plan(total: int, guided_paper_steps: float, scale: float, *, decay: bool = True, strength: float = 1.0,
              refine_paper_thresholds: dict[float, float] | None = None, max_iters: int = 0,
              stop_below: bool = True, give_up_at: int | None = None, enter_above: bool = False) -> Plan:
    """The plan for an N-step run from a paper's 50-step settings; ``strength`` multiplies every step size.

    ``refine_paper_thresholds`` maps paper steps (of 50) to loss thresholds; steps that scale outside the guided
    window are dropped, and two paper steps that land on the same step keep the first one's threshold.
    """
    if total < 1:
        raise ValueError(f"steps: a run needs at least 1 step, got {total}")
    n_guided = min(total, scale_step(guided_paper_steps, total))
    guided = frozenset(range(n_guided))
    alphas = {i: strength * step_size(i, total, scale, decay=decay) for i in guided}
    refinement = None
    if refine_paper_thresholds and max_iters > 0:
        thresholds: dict[int, float] = {}
        for paper_step, threshold in sorted(refine_paper_thresholds.items()):
            step = scale_step(paper_step, total)
            if step in guided and step not in thresholds:
                thresholds[step] = threshold
        if thresholds:
            refinement = Refinement(tuple(sorted(thresholds.items())), max_iters, stop_below, give_up_at, enter_above)
    return Plan(total, guided, alphas, refinement)
