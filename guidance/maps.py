"""Recording cross-attention maps during sampling: the recorder (per run) and its immutable record (the value of
the ``ATTENTION_MAPS`` type).

:class:`CaptureMaps` is a method in the session's sense (see ``nodes/host/context.py``): each sampling run gets a fresh
:class:`AttentionRecorder`, an observer of the attention router. For every call of the layers it listens to
(sampler passes only, never the pack's gradient passes) it takes the positive prompt's probabilities, averages the
heads and adds them to a running mean per level (image pixels per map pixel, known from the network's structure for
each layer: map sizes alone coincide at small sizes), kept on the model's device so that recording never
synchronises it. With ``keep_steps`` it also keeps one mean per sampler evaluation σ. Memory is therefore bounded by
the number of levels (and steps, when asked), never by the number of calls. When the run ends the recorder is
frozen into :class:`AttentionMaps` (CPU tensors), which is what nodes downstream read.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .attention import LayerCall, LayerKey, PerTensor, positive_rows
from .records import RunInfo, RunStamp


@dataclass
class StepMaps:
    """Maps of one sampler evaluation σ: ``sums[level]`` ``[B, T, h, w]`` over ``counts[level]`` layer calls
    (level = image pixels per map pixel)."""

    sigma: float
    step: int | None          # index into the sampler's schedule (the interval's start for a midpoint σ)
    exact: bool               # True if σ is a schedule value, False for a solver's intermediate σ
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def mean(self, level: int) -> torch.Tensor:
        return (self.sums[level] / self.counts[level]).cpu()


@dataclass(frozen=True)
class StepMean:
    """The record of one sampler evaluation σ: ``means[level]`` ``[B, T, h, w]`` on the CPU."""

    sigma: float
    step: int | None
    exact: bool
    means: Mapping[int, torch.Tensor]

    def mean(self, level: int) -> torch.Tensor:
        return self.means[level]


def _add(sums: dict, counts: dict, level: int, m: torch.Tensor) -> None:
    if level in sums and sums[level].shape != m.shape:
        raise RuntimeError(f"attention maps at image ÷{level} changed shape within one run: "
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


def sampler_step(call, method: str) -> tuple[int, int]:
    """``(step, N)`` of the sampler running a layer call (``call.sigma`` in ``call.sample_sigmas``): the step σ lies
    in — a solver's intermediate σ belongs to the step it lies in; a σ past the schedule gives N — and the number of
    steps. ``method`` names who needs it, in the error raised when the call carries no schedule."""
    if call.sigma is None or call.sample_sigmas is None:
        raise RuntimeError(f"{method} needs the sampler's σ schedule in transformer_options")
    step, _ = step_of(call.sigma, call.sample_sigmas)
    total = len(call.sample_sigmas) - 1
    return (total if step is None else step), total


def _levels_text(sizes: Mapping[int, tuple[int, int]]) -> str:
    return ", ".join(f"÷{v} ({sizes[v][0]}×{sizes[v][1]})" for v in sorted(sizes))


class _MapsReader:
    """Reading maps per level (shared by the recorder and its record)."""

    map_size: Mapping[int, tuple[int, int]]

    def _means(self) -> Mapping[int, torch.Tensor]:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        return not self.map_size

    def levels(self) -> list[int]:
        """Recorded levels (image pixels per map pixel), finest first."""
        return sorted(self.map_size)

    def size(self, level: int) -> tuple[int, int]:
        """``(h, w)`` of the maps recorded at ``level``."""
        return self.map_size[level]

    def mean(self, level: int) -> torch.Tensor:
        """``[B, T, h, w]`` on the CPU: the mean over every recorded layer call at that level (layers × evaluations)."""
        if level not in self.map_size:
            raise KeyError(f"no attention maps at image ÷{level} were recorded; recorded: "
                           + _levels_text(self.map_size))
        return self._means()[level]


class AttentionRecorder(_MapsReader):
    """Head-averaged cross-attention of the positive prompt, per level, for one sampling run.

    ``layers`` maps each replace key ``(block, number, depth)`` the recorder listens to to its level: image pixels
    per map pixel (8 at the latent's resolution for the SD families, 32 for SD1.5's 16×16 maps at 512 px), read off
    the network's structure by the caller. One recorder serves one run; :meth:`finish` freezes it.
    """

    def __init__(self, layers: Mapping[LayerKey, int], *, keep_steps: bool = False):
        if not isinstance(layers, Mapping):
            raise TypeError("AttentionRecorder: layers must map each replace key to its level (image pixels per "
                            f"map pixel), got {type(layers).__name__}")
        if not layers:
            raise ValueError("AttentionRecorder needs at least one layer to listen to")
        self.level_of = dict(layers)
        self.layers = frozenset(layers)
        self.keep_steps = keep_steps
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.map_size: dict[int, tuple[int, int]] = {}
        self.steps: list[StepMaps] = []
        self.latent_size: tuple[int, int] | None = None
        self.layers_seen: set[LayerKey] = set()

    def _means(self) -> dict[int, torch.Tensor]:
        return {level: (self.sums[level] / self.counts[level]).cpu() for level in self.sums}

    # -- observer protocol -------------------------------------------------------------------------
    def wants(self, call: LayerCall) -> bool:
        return call.sampler_pass and call.key in self.layers and 0 in call.cond_or_uncond

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

    def finish(self, stamp: RunStamp | None = None) -> AttentionMaps:
        """The immutable record of this run (CPU tensors)."""
        steps = tuple(StepMean(s.sigma, s.step, s.exact, MappingProxyType({v: s.mean(v) for v in s.sums}))
                      for s in self.steps)
        return AttentionMaps(means=MappingProxyType(self._means()), map_size=MappingProxyType(dict(self.map_size)),
                             steps=steps, latent_size=self.latent_size, layers_seen=frozenset(self.layers_seen),
                             stamp=stamp)


@dataclass(frozen=True)
class AttentionMaps(_MapsReader):
    """What one sampling run recorded (the ``ATTENTION_MAPS`` value): per level the mean map ``[B, T, h, w]``,
    optionally one per σ (``steps``), the latent size, the layers seen, and which run it was (``stamp``)."""

    means: Mapping[int, torch.Tensor]
    map_size: Mapping[int, tuple[int, int]]
    steps: tuple[StepMean, ...] = ()
    latent_size: tuple[int, int] | None = None
    layers_seen: frozenset = frozenset()
    stamp: RunStamp | None = None

    def _means(self) -> Mapping[int, torch.Tensor]:
        return self.means


@dataclass
class _CaptureRun:
    recorder: AttentionRecorder

    @property
    def observers(self) -> tuple[AttentionRecorder, ...]:
        return (self.recorder,)

    editors: tuple = ()

    def end(self, stamp: RunStamp) -> AttentionMaps:
        return self.recorder.finish(stamp)


@dataclass(frozen=True)
class CaptureMaps:
    """The capture method: a fresh recorder for every sampling run of the layers it is attached to."""

    keep_steps: bool = False
    name: str = "Capture Cross-Attention"
    edits_attention = False

    def begin(self, info: RunInfo, layers: Mapping[LayerKey, int]) -> _CaptureRun:
        return _CaptureRun(AttentionRecorder(layers, keep_steps=self.keep_steps))
