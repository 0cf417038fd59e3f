"""One sampling run, one run context (the session): the per-run state of every method attached to a model, and the immutable records
a run publishes when it ends.

Every feature of the pack — capturing maps, gradient guidance, attention edits — is a *method* with the same small
interface:

* **attach** (host side, ``attach.py``): on a model clone, one stateless attention router per layer and one
  ``OUTER_SAMPLE`` wrapper (an :class:`Attachment` there) that knows the method, the layers it reads and the
  :class:`RunBoard` its records go to;
* **begin** ``method.begin(info, layers) → MethodRun``: at the start of each sampling run the wrapper creates (or
  joins) the run's :class:`Session` and asks the method for fresh per-run state; the attention router reaches it
  through ``transformer_options`` (never through the model or the method object, which every clone shares);
* **end** ``run.end(stamp) → record``: when the sampler returns, the run's state is frozen into an immutable record
  and published to the board (or returned by the node that ran the sampler).

So two samplers fed by one captured or guided model each publish their own record, a later clone of the model
(another branch, a LoRA on top) gets its own session per run, and nothing a run collects outlives it except its
record. Pure torch: no ComfyUI import (so it is tested without the host).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from ...guidance.attention import AttentionEdit, LayerKey, Observer
from ...guidance.records import RunInfo, RunStamp, latent_digest

#: key in ``transformer_options`` under which a sampling run carries its :class:`Session` (``{"session": …}``), and
#: one of the pack's own model passes its per-pass settings (``grad_pass``, ``sampler_pass``, ``observers``)
PASS_KEY = "attention_align"


class MethodRun(Protocol):
    """A method's state for one sampling run."""

    #: see the positive prompt's attention probabilities in the layers the method reads (filtered by ``wants``)
    observers: tuple[Observer, ...]
    #: change cross-attention (scores/probabilities or an additive bias; filtered by ``wants``)
    editors: tuple[AttentionEdit, ...]

    def end(self, stamp: RunStamp) -> Any:
        """The immutable record of the run (maps, a guidance record, …)."""


class Method(Protocol):
    """Anything the pack attaches to a model (capture, gradient guidance, an attention edit)."""

    name: str
    #: it changes the attention (an edit cannot run through another pack's opaque replace of a layer)
    edits_attention: bool

    def begin(self, info: RunInfo, layers: Mapping[LayerKey, int]) -> MethodRun:
        """Fresh per-run state; ``layers`` maps each layer it was attached to to its level (image pixels per map
        pixel, read off the network's structure by the host)."""


class Session:
    """The state of one sampling run: each attached method's :class:`MethodRun`, keyed by its attachment.

    Created by the outermost of the pack's ``OUTER_SAMPLE`` wrappers, placed in the run's ``transformer_options``
    (under :data:`PASS_KEY`), dropped when the run ends.
    """

    def __init__(self, info: RunInfo):
        self.info = info
        self._runs: dict[int, tuple[object, MethodRun]] = {}
        self.observers: tuple[Observer, ...] = ()
        self.editors: tuple[AttentionEdit, ...] = ()
        self._digest: tuple[torch.Tensor, str] | None = None

    def add(self, attachment: object, run: MethodRun) -> None:
        if id(attachment) in self._runs:
            raise RuntimeError(f"{type(attachment).__name__} joined the same sampling run twice")
        self._runs[id(attachment)] = (attachment, run)
        self.observers += tuple(run.observers)
        self.editors += tuple(run.editors)

    def output_digest(self, output: torch.Tensor) -> str:
        """:func:`latent_digest` of the run's output, computed once however many methods publish."""
        if self._digest is None or self._digest[0] is not output:
            self._digest = (output, latent_digest(output))
        return self._digest[1]

    def run_for(self, attachment: object) -> MethodRun:
        entry = self._runs.get(id(attachment))
        if entry is None or entry[0] is not attachment:
            raise RuntimeError("this sampling run has no state for the attachment asking; was the model's "
                               "OUTER_SAMPLE wrapper skipped?")
        return entry[1]


class RunBoard:
    """The output handle of a node whose MODEL is sampled later (Capture Cross-Attention, Apply Guidance).

    Every sampling run of that model — or of any clone of it — publishes one immutable record here when it ends;
    the board keeps the last ``keep`` of them. A reader resolves the record it wants with :meth:`resolve`: the run
    that returned a given latent, or the run of the only sampler node that used the model. The board is the one
    object shared by the clones (through the model's wrapper); it holds finished records only, never run state.
    """

    def __init__(self, kind: str, *, keep: int = 16):
        if keep < 1:
            raise ValueError(f"keep: {keep} records is not allowed; keep at least 1")
        self.kind, self.keep = kind, keep
        self._records: list[Any] = []
        self._serial = 0

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def publish(self, record: Any) -> None:
        self._records.append(record)
        del self._records[:-self.keep]

    @property
    def records(self) -> tuple[Any, ...]:
        return tuple(self._records)

    def resolve(self, *, latent: torch.Tensor | None = None, input_name: str = "input") -> Any:
        """The record of the run that returned ``latent``, or, without a latent, of the only sampler node this
        board has records from (its latest run). Errors say which input to connect."""
        if not self._records:
            raise ValueError(f"{input_name}: no sampling run of this model has finished yet. Run a sampler with the "
                             f"model this {self.kind} came from, and connect that sampler's LATENT to this node's "
                             "'latent' input so this node runs after it.")
        if latent is not None:
            digest = latent_digest(latent)
            for record in reversed(self._records):
                if record.stamp.output_digest == digest:
                    return record
            runs = ", ".join(r.stamp.describe() for r in self._records)
            raise ValueError(f"latent: it is not the output of any sampling run of this model ({runs}); connect "
                             "the LATENT output of the sampler node that ran it (not a denoised, decoded or "
                             "processed latent)")
        nodes = sorted({str(r.stamp.node_id) for r in self._records})
        if len(nodes) > 1:
            raise ValueError(f"{input_name}: this model was sampled by {len(nodes)} sampler nodes ({', '.join(nodes)}); "
                             "connect the LATENT of the one you mean to this node's 'latent' input")
        return self._records[-1]


def resolve_record(value: Any, *, latent: torch.Tensor | None, input_name: str) -> Any:
    """A record from a node input that is either a record already (from the Guided KSampler, which runs its own
    sampler) or a :class:`RunBoard` (from a node whose MODEL another sampler runs)."""
    if isinstance(value, RunBoard):
        return value.resolve(latent=latent, input_name=input_name)
    if latent is not None and getattr(value, "stamp", None) is not None \
            and value.stamp.output_digest != latent_digest(latent):
        raise ValueError(f"latent: it is not the latent of the run {input_name} comes from; connect the same "
                         "sampler's LATENT, or leave 'latent' unconnected")
    return value
