"""Recording cross-attention maps during sampling: the object behind the ``ATTENTION_MAPS`` type.

The recorder is an observer of :class:`~.attention_patch.CrossAttentionReplace`. For every attn2 call of the
layers it was installed on (sampler passes only, never the pack's gradient passes) it takes the positive prompt's
probabilities, averages the heads and adds them to a running mean per level (latent pixels per map pixel, known
from the UNet's structure for each layer: map sizes alone coincide at small sizes), kept on the model's device so that
recording never synchronises it (read back as CPU tensors). With ``keep_steps`` it also keeps one mean per sampler
evaluation σ. Memory is therefore bounded by the number of levels
(and steps, when asked), never by the number of calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention_patch import LayerCall, PerTensor, positive_rows


@dataclass
class StepMaps:
    """Maps of one sampler evaluation σ: ``sums[level]`` ``[B, T, h, w]`` over ``counts[level]`` layer calls
    (level = latent pixels per map pixel)."""

    sigma: float
    step: int | None          # index into the sampler's schedule (the interval's start for a midpoint σ)
    exact: bool               # True if σ is a schedule value, False for a solver's intermediate σ
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def mean(self, level: int) -> torch.Tensor:
        return (self.sums[level] / self.counts[level]).cpu()


def _add(sums: dict, counts: dict, level: int, m: torch.Tensor) -> None:
    if level in sums and sums[level].shape != m.shape:
        raise RuntimeError(f"attention maps at latent ÷{level} changed shape within one run: "
                           f"{tuple(sums[level].shape)} → {tuple(m.shape)}")
    sums[level] = sums[level] + m if level in sums else m.clone()
    counts[level] = counts.get(level, 0) + 1


_schedule_values = PerTensor(lambda t: t.reshape(-1).tolist())


def step_of(sigma: float, schedule: torch.Tensor | None) -> tuple[int | None, bool]:
    """Index of σ in a (decreasing) schedule, or of the interval it lies in; ``(None, False)`` without a schedule.
    The schedule is read once per tensor object (on a GPU each read is a synchronisation)."""
    if schedule is None:
        return None, False
    s = _schedule_values(schedule)
    for i, v in enumerate(s):
        if v == sigma:
            return i, True
    for i in range(len(s) - 1):
        if s[i] > sigma > s[i + 1]:
            return i, False
    return None, False


class AttentionRecorder:
    """Head-averaged cross-attention of the positive prompt, per level, for one sampling run at a time.

    ``layers`` maps each replace key ``(block, number, depth)`` the recorder listens to to its level: latent pixels
    per map pixel (1 at the latent's resolution, 4 for SD1.5's 16×16 maps at 512 px), read off the UNet's
    structure by the caller. :meth:`begin_run`
    (called by the capture node's sampling wrapper) clears what an earlier run recorded, so the handle always holds
    the most recent run of the model it was attached to.
    """

    def __init__(self, layers: dict[tuple[str, int, int], int], keep_steps: bool = False):
        if not layers:
            raise ValueError("AttentionRecorder needs at least one layer to listen to")
        if not isinstance(layers, dict):
            raise TypeError("AttentionRecorder: layers must map each replace key to its level (latent pixels per "
                            f"map pixel), got {type(layers).__name__}")
        self.level_of = dict(layers)
        self.layers = frozenset(layers)
        self.keep_steps = keep_steps
        self.begin_run()

    def __deepcopy__(self, memo: dict) -> "AttentionRecorder":
        return self  # one shared handle for every clone of the captured model

    def begin_run(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.map_size: dict[int, tuple[int, int]] = {}
        self.steps: list[StepMaps] = []
        self.latent_size: tuple[int, int] | None = None
        self.layers_seen: set[tuple[str, int, int]] = set()
        self.runs = getattr(self, "runs", 0) + 1

    # -- observer protocol -------------------------------------------------------------------------
    def wants(self, call: LayerCall) -> bool:
        return not call.grad_pass and call.key in self.layers and 0 in call.cond_or_uncond

    def observe(self, probs: torch.Tensor, call: LayerCall) -> None:
        h, w = call.size
        pos = positive_rows(probs, call)                                   # [B, heads, h·w, T]
        m = pos.detach().mean(dim=1).transpose(1, 2)                       # [B, T, h·w]
        m = m.reshape(m.shape[0], m.shape[1], h, w).float()                # [B, T, h, w], on the model's device
        if self.latent_size is not None and self.latent_size != call.latent_size:
            raise RuntimeError(f"latent size changed within one sampling run: {self.latent_size} → {call.latent_size}")
        self.latent_size = call.latent_size
        self.layers_seen.add(call.key)
        level = self.level_of[call.key]
        self.map_size[level] = call.size
        _add(self.sums, self.counts, level, m)
        if self.keep_steps and call.sigma is not None:
            entry = self._step(call)
            _add(entry.sums, entry.counts, level, m)

    def _step(self, call: LayerCall) -> StepMaps:
        for entry in self.steps:
            if entry.sigma == call.sigma:
                return entry
        step, exact = step_of(call.sigma, call.sample_sigmas)
        entry = StepMaps(call.sigma, step, exact)
        self.steps.append(entry)
        return entry

    # -- reading -----------------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not self.sums

    def levels(self) -> list[int]:
        """Recorded levels (latent pixels per map pixel), finest first."""
        return sorted(self.sums)

    def size(self, level: int) -> tuple[int, int]:
        """``(h, w)`` of the maps recorded at ``level``."""
        return self.map_size[level]

    def mean(self, level: int) -> torch.Tensor:
        """``[B, T, h, w]`` on the CPU: the mean over every recorded layer call at that level (layers × evaluations)."""
        if level not in self.sums:
            raise KeyError(f"no attention maps at latent ÷{level} were recorded; recorded: "
                           + ", ".join(f"÷{v} ({self.map_size[v][0]}×{self.map_size[v][1]})" for v in self.levels()))
        return (self.sums[level] / self.counts[level]).cpu()
