"""What identifies one sampling run and the records it publishes: what the run knows when it starts
(:class:`RunInfo`), and the stamp of its records (:class:`RunStamp`, with the digest of the latent it returned).
Pure torch: no host import."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunInfo:
    """What a sampling run knows when it starts: its σ schedule ``[N + 1]``, the sampler's name (for logs), the
    ComfyUI node that runs it (``node_id``/``prompt_id`` from the execution context; None outside a prompt), and the
    positive prompt's token count (to recognise a context ComfyUI padded by repeating it)."""

    sigmas: torch.Tensor
    sampler: str = ""
    node_id: str | None = None
    prompt_id: str | None = None
    context_tokens: int | None = None   # token count of the positive prompt's context (None: several lengths)

    @property
    def total_steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass(frozen=True)
class RunStamp:
    """Which run a record belongs to: the sampler node, the prompt, a serial number (per board) and the digest of
    the latent the sampler returned (:func:`latent_digest`), by which a reader finds the record of *its* latent."""

    node_id: str | None
    prompt_id: str | None
    serial: int
    output_digest: str

    def describe(self) -> str:
        node = f"sampler node {self.node_id}" if self.node_id is not None else "a sampler outside a prompt"
        return f"run {self.serial} ({node})"


def latent_digest(samples: torch.Tensor) -> str:
    """A digest of a latent's shape and float32 values: the sampler's output and the LATENT a node downstream
    receives give the same digest (ComfyUI only moves it to the intermediate device)."""
    t = samples.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha1(repr(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()
