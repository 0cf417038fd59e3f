"""Gradient guidance inside ComfyUI's samplers: the method the session runs, its per-run state, and the
SAMPLER_SAMPLE wrapper.

:class:`GradientMethod` is what is attached to the model; at the start of each sampling run it gives the run's
:class:`GuidedRun` — the one object holding everything of that run: its log, plan, progress bar, runaway bookkeeping,
fast mode's pending evaluation, and the steps both sampler paths call. The wrapper (set on a model clone, so it
works for KSampler, KSamplerAdvanced, SamplerCustom and SamplerCustomAdvanced) finds that run in the session, swaps
the KSAMPLER's ``sampler_function`` for an in-place or chunked version (``sampler_control.py``) whose step is
:meth:`GuidedRun.step`, and restores it in ``finally``. Which samplers take which path: ``samplers.py``.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math

import comfy.k_diffusion.sampling as kd
import comfy.model_management
import comfy.samplers
import torch

from ...guidance.engine import GuidanceLog, GuidanceRecord, guided_step
from ...guidance.method import GradientGuidance
from ...guidance.records import RunInfo, RunStamp
from .context import PASS_KEY
from .fast import FastCapture
from .gradient_pass import GradientPass, _unet_view
from .progress import RunProgress
from .sampler_control import chunked_function, in_place_function
from .samplers import CHUNKED_MODIFIED, ESTIMATE_ONLY, choose_path, sampler_name
from .weights import deinference_


class GradientMethod:
    """A gradient guidance attached to a model: each sampling run gets a fresh :class:`GuidedRun`.
    ``truncate``: gradient passes stop after the last layer the loss reads; ``verify``: each guided step also
    measures the loss after its update (tests)."""

    edits_attention = False

    def __init__(self, guidance: GradientGuidance, *, verify: bool = False, truncate: bool = True):
        self.guidance, self.verify, self.truncate = guidance, verify, truncate
        self.name = guidance.name

    def begin(self, info: RunInfo, layers) -> GuidedRun:
        return GuidedRun(self.guidance, info, frozenset(layers), verify=self.verify, truncate=self.truncate)


class GuidedRun:
    """One guided sampling run (module docstring). ``read_layers``: the keys of the layers the loss reads."""

    observers: tuple = ()
    editors: tuple = ()

    def __init__(self, guidance: GradientGuidance, info: RunInfo, read_layers: frozenset, *, verify: bool = False,
                 truncate: bool = True):
        self.guidance, self.read_layers = guidance, read_layers
        self.log = GuidanceLog(guidance.name, info.sampler, "", info.total_steps)
        self.verify, self.truncate = verify, truncate
        self.plan = guidance.plan(info.total_steps)
        if self.guidance.fast and self.plan.refinement is not None:
            self.plan = dataclasses.replace(self.plan, refinement=None)
            self.log.notes.append("fast mode: no refinement (each iteration would need a model evaluation at the same "
                                  "σ, which the sampler does not make)")
        self.progress = RunProgress(self.plan, self.guidance.name)
        self.weights_ready = False
        self._step = 0
        self.halted: torch.Tensor | None = None    # [B] samples no longer guided (a runaway update was undone)
        self.pending: FastCapture | None = None    # fast mode: the evaluation being captured

    def _progress(self, k: int, total: int) -> None:
        self.progress.refinement(self._step, k)

    def step(self, model_k, x: torch.Tensor, i: int, sigma: torch.Tensor, extra_args: dict) -> torch.Tensor:
        """The guided step i on x (k-diffusion space); returns the new latent."""
        sigma = self._begin(model_k, x, i, sigma)
        gp = GradientPass(model_k, sigma, extra_args, self.guidance, read_layers=self.read_layers,
                          truncate=self.truncate)
        x_new, rec = guided_step(x, i, float(sigma.reshape(-1)[0]), self.plan, gp,
                                 verify_fn=gp.loss_only if self.verify else None,
                                 check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                                 progress=self._progress, frozen=self.halted,
                                 max_update_ratio=self.guidance.max_update_ratio)
        self._record(rec)
        if rec.iterations is not None:
            self.progress.refined(i, int(rec.iterations.max()))
        return x_new

    def fast_step(self, model_k, x: torch.Tensor, i: int, sigma: torch.Tensor, extra_args: dict):
        """Fast mode's guided step i: the sampler's own evaluation at x gives the loss, the gradient and the denoised
        estimate; returns (the updated latent, that estimate). See ``fast.py``."""
        sigma_b = self._begin(model_k, x, i, sigma)
        measure_only = self.plan.alphas[i] == 0 or (self.halted is not None and bool(self.halted.all()))
        capture = FastCapture(self.guidance.objective, self.read_layers, with_grad=not measure_only)
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.pending = capture
        try:
            denoised = model_k(x, sigma, **extra_args)
        finally:
            self.pending = None
        if capture.loss is None:
            raise RuntimeError(f"Attention Align (fast mode): the sampler's evaluation at step {i} did not reach the "
                               "guidance; another node's wrapper may have replaced ComfyUI's batch evaluation. "
                               "Turn fast mode off.")
        delta = capture.delta
        _, mask = _unet_view(model_k, x, sigma_b, extra_args.get("denoise_mask"), extra_args.get("model_options", {}))
        if mask is not None:
            delta = delta * mask
        x_new, rec = guided_step(x, i, float(sigma_b[0]), self.plan, lambda _x: (capture.loss, delta),
                                 frozen=self.halted, max_update_ratio=self.guidance.max_update_ratio)
        self._record(rec)
        return x_new, denoised

    def _begin(self, model_k, x: torch.Tensor, i: int, sigma: torch.Tensor) -> torch.Tensor:
        """What both kinds of guided step do first: note the step, and once per run give the UNet normal tensors as
        weights (autograd cannot save inference tensors; the weights do not change during sampling). Returns σ
        per sample ``[B]``."""
        if not self.weights_ready:
            deinference_(model_k.inner_model.inner_model.diffusion_model)
            self.weights_ready = True
        self._step = i
        return sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma

    def _record(self, rec) -> None:
        """Log a guided step's record; a sample whose update ran away is frozen from now on, with a note."""
        self.log.steps.append(rec)
        new = rec.halted if self.halted is None else rec.halted & ~self.halted
        self.halted = rec.halted if self.halted is None else self.halted | rec.halted
        for b in new.nonzero().flatten().tolist():
            ratio = float(rec.update_ratio[b])
            what = "was not finite" if not math.isfinite(ratio) or not all(
                math.isfinite(float(loss[b])) for loss in rec.losses) else \
                f"changed the latent by {ratio:.3g}× its own RMS (at most {self.guidance.max_update_ratio:g}× is allowed)"
            note = (f"sample {b}: the update at step {rec.step} {what}; that step was undone and this sample is not "
                    f"guided for the rest of the run (lower strength or scale_factor)")
            self.log.notes.append(note)
            logging.warning("Attention Align (%s): %s", self.guidance.name, note)


    def end(self, stamp: RunStamp) -> GuidanceRecord:
        return self.log.finish(stamp)


def _shared_noise(x, sigmas, seed):
    """One noise stream for all chunks, built as a stock (non-SDE) sampler builds it for the whole run. (Every SDE
    sampler that takes a noise sampler is on the in-place path, so a Brownian tree is never needed here.)"""
    return kd.default_noise_sampler(x, seed=seed)


def sampler_wrapper(attachment):
    """The SAMPLER_SAMPLE wrapper of a gradient guidance ``attachment``: guides every sampling run of the model."""
    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                disable_pbar=False):
        sampler = executor.class_obj
        if not isinstance(sampler, comfy.samplers.KSAMPLER):
            raise ValueError(f"sampler: Attention Align guidance needs a k-diffusion sampler (KSAMPLER); "
                             f"got {type(sampler).__name__}")
        session = extra_args["model_options"]["transformer_options"][PASS_KEY]["session"]
        run: GuidedRun = session.run_for(attachment)
        path, label = choose_path(sampler)
        if run.guidance.fast and label in ESTIMATE_ONLY:
            raise ValueError(f"fast: the {label} sampler builds each step from the model's estimate alone, so a fast-mode "
                             "update (which keeps the estimate made before it) would never reach the image; turn fast "
                             f"off for {label}, or use another sampler")
        run.log.sampler, run.log.path = label, path
        if path == "chunked" and label in CHUNKED_MODIFIED:
            run.log.notes.append(f"{label}: no exact in-place update exists; the {len(run.plan.guided)} guided "
                                 "steps run one step at a time (a restarted, lower-order solver there)")
        original = sampler.sampler_function
        fast = run.guidance.fast
        step = run.fast_step if fast else run.step
        if path == "in_place":
            sampler.sampler_function = in_place_function(original, step, run.plan.guided, label=label, fast=fast)
        else:
            name = sampler_name(original)
            takes_noise = "noise_sampler" in inspect.signature(original).parameters
            sampler.sampler_function = chunked_function(
                original, step, max(run.plan.guided, default=-1) + 1,
                noise_sampler=_shared_noise if takes_noise else None,
                skip_final_zero=name in ("dpm_fast", "dpm_adaptive"), reseed=name is None, fast=fast)
        try:
            return executor(guider, sigmas, extra_args, run.progress.wrap_callback(callback), noise, latent_image,
                            denoise_mask, disable_pbar)
        finally:
            sampler.sampler_function = original
    return wrapper
