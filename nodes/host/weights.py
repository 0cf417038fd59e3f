"""Making the shared UNet's weights usable by autograd, once per run, without changing any value.

ComfyUI loads models inside ``torch.inference_mode()``, so their parameters are inference tensors, which autograd
cannot save for backward. :func:`deinference_` replaces each such parameter or buffer of the diffusion network by an
equal normal tensor, one at a time (at most one extra tensor exists at any moment, never a second copy of the
weights), in place in the shared model. Every other user of the model sees the same numbers: the values are
copied exactly, ComfyUI's LoRA patching backs up and restores whatever tensor is there, and its loading/offloading
moves create inference tensors anew, which the next guided run swaps again (the README's "How guidance runs" says
this, and ``tests/test_host_weights.py`` checks it).
"""
from __future__ import annotations

import torch


def deinference_(module: torch.nn.Module) -> int:
    """Replace inference-tensor parameters and buffers of ``module`` by equal normal tensors; returns how many were
    swapped (0 when none is left: the swap is idempotent)."""
    swapped = 0
    with torch.inference_mode(False):
        for mod in module.modules():
            for table, make in ((mod._parameters, lambda t: torch.nn.Parameter(t.clone(), requires_grad=False)),
                                (mod._buffers, lambda t: t.clone())):
                for name in list(table):
                    if table[name] is not None and table[name].is_inference():
                        table[name] = make(table[name])     # the old tensor is freed here (no other reference)
                        swapped += 1
    return swapped
