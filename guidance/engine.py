"""The latent update loop shared by the gradient methods (T-SAM, Attend-and-Excite, SynGen).

At a guided step i the sampler's latent x (k-diffusion space) gets ``x ← x − α_i·∇_z L / c_in`` where z = c_in·x is
the latent the UNet sees: this is the official ``z ← z − α_i ∇_z L`` (see the README, "How guidance runs"). The host supplies
``grad_fn(x) → (L per sample [B], ∇_z L / c_in [B, …])`` (one cond-only UNet pass with graph); everything here is
plain torch.

Refinement reproduces the official loops exactly, with one evaluation reused: the step's own forward is the first
evaluation. Both official loops (A&E's ``while loss > target`` and T-SAM's ``for cnt in range(30)`` with a give-up
check at ``cnt == 20``) decide on a loss computed one evaluation *before* the latest one; with evaluations
L_0, L_1, … (L_k at the latent after k updates), iteration k (1-based) decides on L_{max(k−2, 0)}.
Each sample of a batch refines on its own (its own stop decisions), as the per-sample official loops do.

Runaway updates: a step whose total change of a sample's latent is not finite, whose loss is not finite, or whose
RMS exceeds ``MAX_UPDATE_RATIO`` times the RMS of that sample's latent before the step (an update larger than the
latent itself replaces the image rather than steering it) is undone for that sample, and the sample is not guided
for the rest of the run (:attr:`StepRecord.halted`); the host reports it in the log and on the console. Official
configurations on real checkpoints stay far below the bound; it catches extreme strength × scale settings.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from einops import rearrange

from .attention import LayerCall, positive_rows
from .schedule import Plan

GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: largest allowed RMS of one guided step's change of a sample's latent, relative to that latent's own RMS
MAX_UPDATE_RATIO = 1.0


class StopForward(Exception):
    """Raised inside a gradient pass once every map the loss needs exists: the rest of the UNet is skipped."""


class PassMaps:
    """Observer for one gradient pass: the positive prompt's head-averaged maps of the layers the loss reads.

    ``layers`` are the replace keys ``(block, number, depth)`` of those layers — found from the UNet's structure by
    the caller, never inferred from map sizes (which coincide at small sizes: at 16×16 px every level below the
    latent's is 1×1). :meth:`maps` returns ``[B, T, h, w]``, the mean over those layers, with the autograd graph
    intact. Each layer counts once per pass (a layer that another pack runs twice does not weigh double). With
    ``truncate`` it raises :class:`StopForward` as soon as every one of them was seen: nothing after that can change
    the loss, so the truncated pass gives the same loss and gradient as the full one at a fraction of the cost.
    """

    def __init__(self, layers, *, truncate: bool = False, measure_only: bool = False, stop_graph: bool = False):
        self.layers = frozenset(layers)
        if not self.layers:
            raise ValueError("PassMaps needs at least one layer to read")
        self.truncate = truncate
        self.measure_only = measure_only          # read a sampler evaluation without graph (fast mode, strength 0)
        # fast mode: once every layer was read, the rest of the forward keeps no autograd graph (grad mode off until
        # the caller's enable_grad context ends), so memory holds only what the loss's backward needs
        self.stop_graph = stop_graph
        self.parts: dict[tuple[str, int, int], torch.Tensor] = {}
        self.size: tuple[int, int] | None = None

    def wants(self, call: LayerCall) -> bool:
        wanted = (call.sampler_pass and not call.grad_pass) if self.measure_only else call.grad_pass
        return wanted and call.key in self.layers and call.key not in self.parts and 0 in call.cond_or_uncond

    def observe(self, probs: torch.Tensor, call: LayerCall) -> None:
        if self.size is not None and call.size != self.size:
            raise RuntimeError(f"the layers the loss reads have maps of different sizes: {self.size} and "
                               f"{call.size} at {call.key}")
        self.size = call.size
        self.parts[call.key] = positive_rows(probs, call).mean(dim=1)      # [B, h·w, T]
        if len(self.parts) == len(self.layers):
            if self.truncate:
                raise StopForward
            if self.stop_graph:
                torch.set_grad_enabled(False)

    def maps(self) -> torch.Tensor:
        if not self.parts:
            raise RuntimeError(f"none of the cross-attention layers the loss reads ({sorted(self.layers)}) ran in "
                               "the gradient pass")
        h, w = self.size
        return rearrange(torch.stack(list(self.parts.values())).mean(0), "b (h w) t -> b t h w", h=h, w=w)


@dataclass
class StepRecord:
    """What one guided step did, per sample of the batch."""

    step: int
    sigma: float
    alpha: float
    losses: list[torch.Tensor] = field(default_factory=list)  # every evaluation, [B] each; [0] = before updates
    iterations: torch.Tensor | None = None                    # refinement updates per sample [B]
    gave_up: torch.Tensor | None = None                       # T-SAM: stopped above threshold at give_up_at [B]
    loss_after: torch.Tensor | None = None                    # loss at the updated latent (only when verifying)
    x_before: torch.Tensor | None = None                      # the latent before the step (only when verifying)
    x_after: torch.Tensor | None = None                       # the updated latent (only when verifying)
    update_ratio: torch.Tensor | None = None                  # RMS(change) / RMS(latent before) per sample [B]
    halted: torch.Tensor | None = None                        # runaway at this step: undone, no more guidance [B]

    @property
    def loss_before(self) -> torch.Tensor:
        return self.losses[0]

    @property
    def loss_final(self) -> torch.Tensor:
        """The loss whose gradient made the step's regular update (after any refinement)."""
        return self.losses[-1]


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def guided_step(x: torch.Tensor, i: int, sigma: float, plan: Plan, grad_fn: GradFn,
                verify_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                check_interrupt: Callable[[], None] = lambda: None,
                progress: Callable[[int, int], None] | None = None,
                frozen: torch.Tensor | None = None,
                max_update_ratio: float = math.inf) -> tuple[torch.Tensor, StepRecord]:
    """One guided step: optional refinement at the same σ, then the regular update ``x − α·δ``.

    ``frozen`` ``[B]`` (bool): samples halted at an earlier step; their loss is still measured, their latent is not
    changed. A sample whose change at this step runs away (not finite, or an RMS above ``max_update_ratio`` × its
    latent's; the host passes :data:`MAX_UPDATE_RATIO`) keeps ``x`` and is marked in ``rec.halted``. Returns the updated latent (a new tensor; ``x`` is not modified) and the step's record.
    """
    alpha = plan.alphas[i]
    rec = StepRecord(step=i, sigma=sigma, alpha=alpha)
    if verify_fn is not None:
        rec.x_before = x.detach().clone()
    x_start = x
    keep = None if frozen is None else _per_sample(~frozen.to(x.device), x).bool()
    check_interrupt()
    loss, delta = grad_fn(x)
    if keep is not None:
        delta = torch.where(keep, delta, torch.zeros_like(delta))
    rec.losses.append(loss)
    if plan.refine_at(i) and alpha != 0:
        x, loss, delta = _refine(x, loss, delta, alpha, plan, grad_fn, rec, check_interrupt, progress, keep)
    x = x - alpha * delta
    x = _stop_runaways(x_start, x, rec, max_update_ratio)
    if verify_fn is not None:
        check_interrupt()
        rec.loss_after = verify_fn(x)
        rec.x_after = x.detach().clone()
    return x, rec


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Root mean square per sample: ``[B, …]`` → ``[B]`` (float32 at least)."""
    return t.reshape(t.shape[0], -1).float().pow(2).mean(dim=1).sqrt()


def _stop_runaways(x_start: torch.Tensor, x: torch.Tensor, rec: StepRecord, max_ratio: float) -> torch.Tensor:
    """Undo this step for samples whose change (or loss) is not finite or larger than ``max_ratio`` × their latent."""
    change = x - x_start
    ratio = _rms(change) / _rms(x_start).clamp_min(1e-12)
    finite_loss = torch.stack([l.reshape(-1).isfinite() for l in rec.losses]).all(dim=0).to(ratio.device)
    bad = ~torch.isfinite(ratio) | (ratio > max_ratio) | ~finite_loss
    rec.update_ratio = ratio.detach().cpu()       # one read-back per guided step (the log needs it)
    rec.halted = bad.cpu()
    return torch.where(_per_sample(bad, x).bool(), x_start, x)


def _refine(x, loss, delta, alpha, plan: Plan, grad_fn: GradFn, rec: StepRecord, check_interrupt, progress, keep=None):
    r = plan.refinement
    threshold = r.threshold_at(rec.step)
    b = loss.shape[0]
    active = loss > threshold if r.enter_above else torch.ones(b, dtype=torch.bool, device=loss.device)
    iterations = torch.zeros(b, dtype=torch.long)
    gave_up = torch.zeros(b, dtype=torch.bool)
    for k in range(1, r.max_iters + 1):
        decided_on = rec.losses[max(k - 2, 0)]                 # the loss the official loops look at (see module doc)
        if r.give_up_at is not None and k == r.give_up_at + 1:
            stop = active & (decided_on > threshold)
            gave_up |= stop.cpu()
            active &= ~stop
        if r.stop_below:
            active &= decided_on > threshold
        if not bool(active.any()):
            break
        check_interrupt()
        x = x - alpha * delta * _per_sample(active, delta)
        iterations += active.cpu().long()
        loss, delta = grad_fn(x)
        if keep is not None:
            delta = torch.where(keep, delta, torch.zeros_like(delta))
        rec.losses.append(loss)
        if progress is not None:
            progress(k, r.max_iters)
    rec.iterations, rec.gave_up = iterations, gave_up
    return x, loss, delta


@dataclass
class GuidanceLog:
    """The log a guided sampling run writes while it runs: one :class:`StepRecord` per guided step, and notes.
    Per run (a fresh log for every run); :meth:`finish` freezes it into the published :class:`GuidanceRecord`."""

    method: str = ""
    sampler: str = ""
    path: str = ""                      # "in_place", "chunked" or "attention edit"
    total_steps: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def finish(self, stamp=None) -> GuidanceRecord:
        return GuidanceRecord(self.method, self.sampler, self.path, self.total_steps, tuple(self.steps),
                              tuple(self.notes), stamp)


@dataclass(frozen=True)
class GuidanceRecord:
    """What one guided sampling run did (the ``GUIDANCE_LOG`` value): the method, the sampler and how it was
    guided, one :class:`StepRecord` per guided step (never modified after the run), notes, and which run it was."""

    method: str
    sampler: str
    path: str
    total_steps: int
    steps: tuple[StepRecord, ...]
    notes: tuple[str, ...]
    stamp: object = None                # session.RunStamp

    def loss_curve(self) -> tuple[list[int], torch.Tensor]:
        """(step indices, ``[n_steps, B]`` loss before each step's updates)."""
        if not self.steps:
            return [], torch.zeros(0, 0)
        return [s.step for s in self.steps], torch.stack([s.loss_before.detach().float().cpu() for s in self.steps])
