"""The gradient pass: one positive-prompt-only UNet pass with graph, giving the loss and ``∇_z L / c_in``.

The pass runs the positive prompt alone (batch of the latents, no CFG), as the official pipelines do, with grad
enabled outside inference mode: ``z = c_in·x`` is the leaf, the loss reads the maps collected by
:class:`~..guidance.engine.PassMaps` (stopping the network after the last layer it reads, by layer identity), and
the update is ``∇_z L / c_in`` in the sampler's x-space, masked by the inpainting mask. ControlNet residuals enter
the pass detached (the maps see them; no gradient flows through them).
"""
from __future__ import annotations

import contextlib

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import torch
from comfy.ldm.flux.model import Flux

from ...guidance.engine import PassMaps, StopForward
from ...guidance.method import GradientGuidance
from .context import PASS_KEY


def _detach_nested(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach_nested(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach_nested(v) for v in value)
    return value


class DetachedControl:
    """A ControlNet/T2I-adapter seen by the gradient pass: residuals computed without grad and detached."""

    def __init__(self, control):
        self._control = control

    def __getattr__(self, name):
        return getattr(self._control, name)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        with torch.no_grad():
            out = self._control.get_control(x_noisy.detach(), t, cond, batched_number, transformer_options)
        return _detach_nested(out)


def _positive_conds(guider) -> list[dict]:
    conds = getattr(guider, "conds", {}).get("positive")
    if not conds:
        raise ValueError("positive: guidance needs a positive conditioning")
    return [{**c, "control": DetachedControl(c["control"])} if c.get("control") is not None else c for c in conds]


def _unet_view(model_k, x, sigma, denoise_mask, model_options):
    """What KSamplerX0Inpaint feeds the model: x, or the inpainting composite; plus the mask for the update."""
    if denoise_mask is None:
        return x, None
    if "denoise_mask_function" in model_options:
        denoise_mask = model_options["denoise_mask_function"](
            sigma, denoise_mask, extra_options={"model": model_k.inner_model, "sigmas": model_k.sigmas})
    known = model_k.inner_model.inner_model.scale_latent_inpaint(x=x, sigma=sigma, noise=model_k.noise,
                                                                 latent_image=model_k.latent_image)
    return x * denoise_mask + known * (1.0 - denoise_mask), denoise_mask


def mutates_saved_tensors(base_model, conds) -> bool:
    """Whether a pass with graph changes tensors autograd saved, so PyTorch's remedy (copy such a tensor when, and
    only when, it is changed: ``allow_mutation_on_saved_tensors``) is needed: ComfyUI adds ControlNet residuals in
    place (``h += ctrl``), and Flux's blocks add their own residuals in place (``txt += …``, ``x += …``)."""
    has_control = any(isinstance(c.get("control"), DetachedControl) for c in conds)
    return has_control or isinstance(base_model.diffusion_model, Flux)


def loss_and_gradient(forward, objective, store: PassMaps, model_sampling, x: torch.Tensor, sigma: torch.Tensor, *,
                      with_grad: bool = True, mutates: bool = False):
    """One pass of the model on the latent with the loss read from its maps: the core of the gradient pass and of
    fast mode's evaluation.

    Outside inference mode, ``z = c_in·x`` (the latent the UNet sees) is the leaf; ``forward(z / c_in, σ)`` runs the
    model (``store`` collects the maps the objective reads); the loss is ``objective.loss(maps)`` ``[B]`` and, with
    ``with_grad``, the update direction is ``∇_z L / c_in`` in the sampler's x-space (``[B, C, h, w]``, x's dtype).
    ``mutates``: the model changes saved tensors in place (Flux), so autograd copies them when that happens.
    Returns ``(loss, ∇_z L / c_in or None, forward's output detached)``."""
    mutation_ok = torch.autograd.graph.allow_mutation_on_saved_tensors() if mutates and with_grad \
        else contextlib.nullcontext()
    with torch.inference_mode(False), torch.set_grad_enabled(with_grad), mutation_ok:
        sigma = sigma.detach().clone()
        x_leaf = x.detach().clone()
        c_in = model_sampling.calculate_input(sigma, torch.ones_like(x_leaf))
        z = (x_leaf * c_in).requires_grad_(with_grad)
        out = forward(z / c_in, sigma)
        out = out.detach().clone() if isinstance(out, torch.Tensor) else out
        torch.set_grad_enabled(with_grad)                  # a store may turn grad off after the last layer it reads
        loss = objective.loss(store.maps().float())                             # [B]
        if not with_grad:
            return loss.detach(), None, out
        (g,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), (g / c_in).detach().to(x.dtype), out


class GradientPass:
    """``grad_fn`` for :func:`~..guidance.engine.guided_step`: one positive-only UNet pass with graph."""

    def __init__(self, model_k, sigma: torch.Tensor, extra_args: dict, guidance: GradientGuidance, *,
                 read_layers: frozenset = frozenset(), truncate: bool = True):
        self.model_k, self.sigma, self.extra_args, self.guidance = model_k, sigma, extra_args, guidance
        guider = model_k.inner_model
        self.base_model = guider.inner_model
        self.conds = _positive_conds(guider)
        self.mutates = mutates_saved_tensors(self.base_model, self.conds)
        self.model_options = extra_args.get("model_options", {})
        # Truncation needs the whole positive prompt in one UNet call: several positive conditionings (areas,
        # combines) are run in separate calls, and stopping the first would lose the others' maps.
        self.read_layers = read_layers
        self.truncate = truncate and len(self.conds) == 1

    def _options(self, store: PassMaps) -> dict:
        mo = dict(self.model_options)
        to = dict(mo.get("transformer_options", {}))
        to[PASS_KEY] = {**(to.get(PASS_KEY) or {}), "grad_pass": True, "observers": [store]}   # the run's session stays
        if getattr(comfy_attention.optimized_attention, "__name__", "") == "attention_sage" \
                and "optimized_attention_override" not in to:
            # SageAttention has no backward; the gradient pass uses PyTorch's differentiable SDPA instead
            to["optimized_attention_override"] = lambda func, *args, **kwargs: \
                comfy_attention.attention_pytorch(*args, **kwargs)
        mo["transformer_options"] = to
        return mo

    def _loss(self, x: torch.Tensor, with_grad: bool):
        x_in, mask = _unet_view(self.model_k, x, self.sigma, self.extra_args.get("denoise_mask"), self.model_options)
        store = PassMaps(self.read_layers, truncate=self.truncate)

        def forward(x_k, sigma):
            try:
                comfy.samplers.calc_cond_batch(self.base_model, [self.conds], x_k, sigma, self._options(store))
            except StopForward:
                pass                                       # the maps are complete; the rest of the UNet is skipped

        loss, delta, _ = loss_and_gradient(forward, self.guidance.objective, store, self.base_model.model_sampling,
                                           x_in, self.sigma, with_grad=with_grad, mutates=self.mutates)
        if delta is None:
            return loss, None, None
        if mask is not None:
            delta = delta * mask
        return loss, delta.to(x.dtype), mask

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, delta, _ = self._loss(x, with_grad=True)
        return loss, delta

    def loss_only(self, x: torch.Tensor) -> torch.Tensor:
        return self._loss(x, with_grad=False)[0]
