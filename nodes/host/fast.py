"""Fast mode: the guidance's loss and gradient taken from the sampler's own conditional evaluation at σ_i.

A guided step in exact mode costs an extra cond-only UNet forward (truncated after the last layer the loss reads)
and its backward before the sampler's own evaluation. In fast mode the sampler's evaluation at σ_i *is* the gradient
pass: a ``CALC_COND_BATCH`` wrapper runs the positive prompt's rows with the autograd graph kept (the negative rows
without, as usual), the loss reads their maps, one backward to the input gives ``δ = ∇_z L / c_in``, and the
sampler receives the denoised estimate of that same evaluation. So a guided step costs one backward and no extra
forward (the positive rows are evaluated apart from the negative ones, which costs a little batching efficiency).

The update is applied with a prediction made before it: the sampler continues from ``x' = x − α·δ`` with D(x) (see
``guidance/sampler_control.py``). Against exact mode, whose step uses D(x'), the next latent differs by
``(σ_{i+1} − σ_i)/σ_i · (D(x') − D(x)) ≈ (σ_{i+1} − σ_i)/σ_i · J_D·(x' − x)`` to first order, J_D = ∂D/∂x: small where
the methods act (the first, high-σ steps, where the denoised estimate hardly moves with the latent) and shrinking
with the step size σ_{i+1} − σ_i. Refinement is not offered in fast mode: each of its iterations needs an evaluation at
the same σ that the sampler never makes, so it would cost what exact mode costs.

With strength 0 (or every sample halted) nothing is split and no graph is kept: the loss is read from the sampler's
ordinary batched evaluation, which is then stock, bit for bit.
"""
from __future__ import annotations

import torch

from ...guidance.engine import PassMaps
from .context import PASS_KEY
from .gradient_pass import DetachedControl, loss_and_gradient, mutates_saved_tensors


class FastCapture:
    """One fast guided step's evaluation, filled by the CALC_COND_BATCH wrapper: ``loss`` ``[B]`` and
    ``delta`` ``[B, …]`` (zeros when only measuring)."""

    def __init__(self, objective, read_layers, *, with_grad: bool):
        self.objective, self.read_layers, self.with_grad = objective, read_layers, with_grad
        self.loss: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.done = False

    def _options(self, model_options: dict, store: PassMaps) -> dict:
        mo = dict(model_options)
        to = dict(mo.get("transformer_options", {}))
        ctx = {**(to.get(PASS_KEY) or {}), "observers": [store]}
        if self.with_grad:
            ctx["grad_pass"] = True                    # the graph runs through the probabilities the loss reads
            ctx["sampler_pass"] = True                 # and it is the sampler's own evaluation (capture, edits)
        to[PASS_KEY] = ctx
        mo["transformer_options"] = to
        return mo

    def evaluate(self, executor, model, conds, x_in, timestep, model_options):
        """The sampler's evaluation, the loss read from it (with the gradient when ``with_grad``)."""
        self.done = True
        if not self.with_grad:
            store = PassMaps(self.read_layers, measure_only=True)
            out = executor(model, conds, x_in, timestep, self._options(model_options, store))
            self.loss = self.objective.loss(store.maps().float()).detach()
            self.delta = torch.zeros_like(x_in)
            return out
        positive = [{**c, "control": DetachedControl(c["control"])} if c.get("control") is not None else c
                    for c in conds[0]]
        store = PassMaps(self.read_layers, stop_graph=True)
        options = self._options(model_options, store)
        self.loss, self.delta, out_positive = loss_and_gradient(
            lambda x_k, sigma: executor(model, [positive], x_k, sigma, options)[0], self.objective, store,
            model.model_sampling, x_in, timestep, mutates=mutates_saved_tensors(model, positive))
        rest = executor(model, [None, *conds[1:]], x_in, timestep, model_options) if len(conds) > 1 else []
        return [out_positive.to(x_in.dtype), *rest[1:]]


def calc_cond_batch_wrapper(attachment):
    """The CALC_COND_BATCH wrapper of a fast-mode gradient guidance: at a fast guided step (the run holds a pending
    :class:`FastCapture`), the first evaluation goes through the capture; every other call as usual."""
    def wrapper(executor, model, conds, x_in, timestep, model_options):
        ctx = model_options.get("transformer_options", {}).get(PASS_KEY) or {}
        session = ctx.get("session")
        capture = session.run_for(attachment).pending if session is not None else None
        if capture is None or capture.done or ctx.get("grad_pass"):
            return executor(model, conds, x_in, timestep, model_options)
        return capture.evaluate(executor, model, conds, x_in, timestep, model_options)
    return wrapper
