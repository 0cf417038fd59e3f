"""Gradient guidance inside ComfyUI's samplers: the gradient pass and the two ways to keep its update.

A ``SAMPLER_SAMPLE`` wrapper (set on a model clone, so it works for KSampler, KSamplerAdvanced, SamplerCustom and
SamplerCustomAdvanced) swaps the KSAMPLER's ``sampler_function`` for the run, and restores it in ``finally``:

* **in place** for samplers that evaluate the model once per step on their own loop state (euler, ddim, lms,
  dpmpp_2m, deis, …; measured per sampler, see the README's sampler table): the model passed to the stock function is a proxy that, at
  the first call at σ_i of a guided step, runs the guidance and writes the new latent into the sampler's own tensor.
  Multistep history is kept, and with strength 0 the result is bit-identical to the stock sampler.
* **chunked** for everything else: the first guided steps run one step at a time (one noise stream shared by all
  chunks), the guidance updating the latent between chunks. Exact for heun and the ancestral midpoint samplers;
  for heunpp2, dpm_fast, dpm_adaptive, uni_pc(_bh2) and sa_solver(_pece) the guided steps run a restarted
  (lower-order) solver, as no exact option exists; samplers from other packs take this path too (logged).

The gradient pass runs the positive prompt alone (batch of the latents, no CFG), as the official pipelines do, with
grad enabled outside inference mode: ``z = c_in·x`` is the leaf, the loss reads the maps collected by
:class:`~..guidance.engine.PassMaps`, and the update is ``∇_z L / c_in`` in the sampler's x-space, masked by the
inpainting mask. ControlNet residuals enter the pass detached (the maps see them; no gradient flows through them).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import sys

import torch
import comfy.k_diffusion.sampling as kd
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy_execution.utils import get_executing_context

from ..guidance.attention_patch import PASS_KEY
from ..guidance.engine import GuidanceLog, PassMaps, StopForward, guided_step
from ..guidance.method import GradientGuidance

log = logging.getLogger("attention_align")
WRAPPER_KEY = "attention_align_guidance"

#: one model evaluation per step on the loop state (or extra evaluations never at a schedule σ)
IN_PLACE = frozenset("""euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp lms dpm_2 dpmpp_sde dpmpp_sde_gpu
dpmpp_2m dpmpp_2m_cfg_pp dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde
dpmpp_3m_sde_gpu ddpm lcm ipndm ipndm_v deis res_multistep res_multistep_cfg_pp res_multistep_ancestral
res_multistep_ancestral_cfg_pp gradient_estimation gradient_estimation_cfg_pp er_sde seeds_2 seeds_3""".split())
#: chunked and exact (a second evaluation can land on a schedule σ, where an in-place write would be lost)
CHUNKED_EXACT = frozenset({"heun", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp"})
#: no exact option: chunked, and the guided steps run a restarted solver
CHUNKED_MODIFIED = frozenset({"heunpp2", "dpm_fast", "dpm_adaptive", "uni_pc", "uni_pc_bh2", "sa_solver",
                              "sa_solver_pece"})


def sampler_name(function) -> str | None:
    """The ComfyUI sampler name of a KSAMPLER's function, or None for functions from other packs."""
    name = getattr(function, "__name__", "")
    if name.startswith("sample_") and getattr(kd, name, None) is function:
        return name[len("sample_"):]
    module = getattr(function, "__module__", "")
    if module == "comfy.samplers" and name in ("dpm_fast_function", "dpm_adaptive_function"):
        return name[: -len("_function")]
    if module.endswith("uni_pc") and name in ("sample_unipc", "sample_unipc_bh2"):
        return "uni_pc" if name == "sample_unipc" else "uni_pc_bh2"
    return None


def choose_path(sampler, force: str | None = None) -> tuple[str, str]:
    """(path, sampler name for logs): ``in_place`` or ``chunked`` for a KSAMPLER."""
    name = sampler_name(sampler.sampler_function)
    churn = float(sampler.extra_options.get("s_churn", 0) or 0)
    label = name or getattr(sampler.sampler_function, "__name__", "unknown")
    if name == "euler" and sampler.inpaint_options.get("random"):
        label = "ddim"                     # ComfyUI's ddim is euler with random inpainting noise
    if force == "chunked":
        return "chunked", label
    if force == "in_place":
        if name not in IN_PLACE or churn:
            raise ValueError(f"the in-place update would be lost with sampler '{label}'"
                             + (" (s_churn > 0)" if churn else "") + "; use the chunked path")
        return "in_place", label
    if name in IN_PLACE and not churn:
        return "in_place", label
    if name is None:
        log.info("Attention Align: sampler function %s is not one of ComfyUI's; guiding it step by step (chunked)",
                 label)
    return "chunked", label


# --------------------------------------------------------------------------------------------- gradient pass
def deinference_(module: torch.nn.Module) -> int:
    """Replace inference-tensor parameters and buffers by equal normal tensors, so autograd can save them.

    ComfyUI loads models inside ``torch.inference_mode()``; such weights cannot be saved for backward. The swap
    keeps every value (the model computes exactly what it did) and is idempotent; it runs again after a LoRA
    re-patch or a device move, which create inference tensors anew.
    """
    swapped = 0
    with torch.inference_mode(False):
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    swapped += 1
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()
                    swapped += 1
    return swapped


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


class GradientPass:
    """``grad_fn`` for :func:`~..guidance.engine.guided_step`: one positive-only UNet pass with graph."""

    def __init__(self, model_k, sigma: torch.Tensor, extra_args: dict, guidance: GradientGuidance, check=None,
                 read_layers: tuple = (), truncate: bool = True):
        self.model_k, self.sigma, self.extra_args, self.guidance = model_k, sigma, extra_args, guidance
        guider = model_k.inner_model
        self.base_model = guider.inner_model
        self.conds = _positive_conds(guider)
        # ComfyUI adds control residuals in place (openaimodel.apply_control: h += ctrl), which autograd refuses for
        # tensors it saved; PyTorch's own remedy clones such a tensor when (and only when) it is mutated.
        self.has_control = any(isinstance(c.get("control"), DetachedControl) for c in self.conds)
        if check is not None:
            check(self.conds)
        self.model_options = extra_args.get("model_options", {})
        # Truncation needs the whole positive prompt in one UNet call: several positive conditionings (areas,
        # combines) are run in separate calls, and stopping the first would lose the others' maps.
        self.read_layers = read_layers
        self.truncate = truncate and len(self.conds) == 1

    def _options(self, store: PassMaps) -> dict:
        mo = dict(self.model_options)
        to = dict(mo.get("transformer_options", {}))
        to[PASS_KEY] = {"grad_pass": True, "observers": [store]}
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
        mutation_ok = torch.autograd.graph.allow_mutation_on_saved_tensors() if self.has_control and with_grad \
            else contextlib.nullcontext()
        with torch.inference_mode(False), torch.set_grad_enabled(with_grad), mutation_ok:
            sigma = self.sigma.detach().clone()
            x_in = x_in.detach().clone()
            c_in = self.base_model.model_sampling.calculate_input(sigma, torch.ones_like(x_in))
            z = (x_in * c_in).requires_grad_(with_grad)
            try:
                comfy.samplers.calc_cond_batch(self.base_model, [self.conds], z / c_in, sigma, self._options(store))
            except StopForward:
                pass                                       # the maps are complete; the rest of the UNet is skipped
            maps = store.maps().float()
            loss = self.guidance.objective.loss(maps)                         # [B]
            if not with_grad:
                return loss.detach(), None, None
            (g,) = torch.autograd.grad(loss.sum(), z)
        delta = g / c_in
        if mask is not None:
            delta = delta * mask
        return loss.detach(), delta.detach().to(x.dtype), mask

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, delta, _ = self._loss(x, with_grad=True)
        return loss, delta

    def loss_only(self, x: torch.Tensor) -> torch.Tensor:
        return self._loss(x, with_grad=False)[0]


# --------------------------------------------------------------------------------------------- the run
def _send_progress_text(text: str) -> None:
    """Show ``text`` on the executing node in the frontend (ComfyUI's progress text); a no-op without a server."""
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    context = get_executing_context()
    if server is not None and context is not None:
        server.send_progress_text(text, context.node_id)


class RunProgress:
    """One monotone progress bar for a guided run: the sampler's steps plus the refinement budget.

    Positions are fixed by the plan, not by what happens: sampler step i ends at ``i + 1 + budget(≤ i)`` and
    refinement iteration k at step i sits at ``i + budget(< i) + k``, where ``budget`` sums ``max_iters`` over the
    refinement steps. A refinement that stops early leaves its unused budget behind in one forward jump, so the
    bar never goes back. The sampler's own bar (its preview callback) is moved onto the same total; what the
    refinement is doing is shown as the node's progress text.
    """

    def __init__(self, plan, method: str):
        self.steps, self.method = plan.total, method
        r = plan.refinement
        self.refine_steps = [] if r is None else \
            sorted(i for i in plan.guided if plan.refine_at(i) and plan.alphas[i] != 0)
        self.max_iters = r.max_iters if r is not None else 0
        self.total = self.steps + self.max_iters * len(self.refine_steps)
        self.pbar = None

    def _budget_before(self, step: int) -> int:
        return self.max_iters * sum(1 for s in self.refine_steps if s < step)

    def after_step(self, i: int) -> int:
        """Bar position once sampler step ``i`` (0-based) is done."""
        return i + 1 + self._budget_before(i + 1)

    def at_refinement(self, i: int, k: int) -> int:
        """Bar position after refinement iteration ``k`` (1-based) at step ``i``."""
        return i + self._budget_before(i) + min(k, self.max_iters)

    def refinement(self, i: int, k: int) -> None:
        if self.pbar is None:
            self.pbar = comfy.utils.ProgressBar(self.total)
        self.pbar.update_absolute(self.at_refinement(i, k), self.total)
        _send_progress_text(f"{self.method}: refining step {i + 1} of {self.steps}, iteration {k} of at most "
                            f"{self.max_iters}")

    def refined(self, i: int, iterations: int) -> None:
        if i in self.refine_steps:
            _send_progress_text(f"{self.method}: step {i + 1} of {self.steps} refined in {iterations} of at most "
                                f"{self.max_iters} iterations (bar: {self.steps} steps + "
                                f"{self.total - self.steps} refinement iterations at most)")

    def wrap_callback(self, callback):
        """The sampler's per-step callback (preview + bar), its step and total moved onto this bar."""
        if callback is None or not self.refine_steps:
            return callback

        def moved(step, x0, x, total_steps):
            return callback(self.after_step(step) - 1, x0, x, self.total)
        return moved


class GuidedRun:
    """Guidance for one sampling run: the plan, the log, and the step function both paths call."""

    def __init__(self, guidance: GradientGuidance, log_: GuidanceLog, total_steps: int, verify: bool = False,
                 check=None, read_layers: tuple = (), truncate: bool = True):
        self.guidance, self.log, self.verify, self.check = guidance, log_, verify, check
        self.read_layers, self.truncate = read_layers, truncate
        self.plan = guidance.plan(total_steps)
        self.progress = RunProgress(self.plan, guidance.objective.name)
        self.weights_ready = False
        self._step = 0
        self.halted: torch.Tensor | None = None    # [B] samples no longer guided (a runaway update was undone)

    def _progress(self, k: int, total: int) -> None:
        self.progress.refinement(self._step, k)

    def step(self, model_k, x: torch.Tensor, i: int, sigma: torch.Tensor, extra_args: dict) -> torch.Tensor:
        """The guided step i on x (k-diffusion space); returns the new latent."""
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma   # σ per sample, [B]
        if not self.weights_ready:                 # once per run: the weights do not change during sampling
            deinference_(model_k.inner_model.inner_model.diffusion_model)
            self.weights_ready = True
        gp = GradientPass(model_k, sigma, extra_args, self.guidance, self.check, self.read_layers, self.truncate)
        self.check = None  # once per run
        self._step = i
        x_new, rec = guided_step(x, i, float(sigma.reshape(-1)[0]), self.plan, gp,
                                 verify_fn=gp.loss_only if self.verify else None,
                                 check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                                 progress=self._progress, frozen=self.halted,
                                 max_update_ratio=self.guidance.max_update_ratio)
        self.log.steps.append(rec)
        self._report_runaways(rec)
        if rec.iterations is not None:
            self.progress.refined(i, int(rec.iterations.max()))
        return x_new


    def _report_runaways(self, rec) -> None:
        new = rec.halted if self.halted is None else rec.halted & ~self.halted
        self.halted = rec.halted if self.halted is None else self.halted | rec.halted
        for b in new.nonzero().flatten().tolist():
            ratio = float(rec.update_ratio[b])
            what = "was not finite" if not math.isfinite(ratio) or not all(
                math.isfinite(float(l[b])) for l in rec.losses) else \
                f"changed the latent by {ratio:.3g}× its own RMS (at most {self.guidance.max_update_ratio:g}× is allowed)"
            note = (f"sample {b}: the update at step {rec.step} {what}; that step was undone and this sample is not "
                    f"guided for the rest of the run (lower strength or scale_factor)")
            self.log.notes.append(note)
            logging.warning("Attention Align (%s): %s", self.guidance.objective.name, note)


class GuidedProxy:
    """Stands in for KSamplerX0Inpaint inside a stock sampler function (the in-place path)."""

    def __init__(self, model_k, sigmas: torch.Tensor, run: GuidedRun):
        self._model_k, self._run = model_k, run
        self._pending: dict[float, list[int]] = {}
        for i in sorted(run.plan.guided):
            self._pending.setdefault(float(sigmas[i]), []).append(i)
        self.missed = set(run.plan.guided)

    def __getattr__(self, name):
        return getattr(self._model_k, name)

    def __call__(self, x, sigma, **kwargs):
        steps = self._pending.get(float(sigma.reshape(-1)[0]))
        if steps:
            i = steps.pop(0)
            self.missed.discard(i)
            x_new = self._run.step(self._model_k, x, i, sigma, kwargs)
            x.copy_(x_new)   # into the sampler's own loop state: the update persists, history included
        return self._model_k(x, sigma, **kwargs)


def _shared_noise_sampler(function, x, sigmas, seed):
    """One noise stream for all chunks, built as the stock function would build it for the whole run."""
    name = sampler_name(function) or ""
    if "sde" in name and name != "er_sde":
        positive = sigmas[sigmas > 0]
        return kd.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed, cpu=not name.endswith("_gpu"))
    return kd.default_noise_sampler(x, seed=seed)


def in_place_function(original, run: GuidedRun):
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        proxy = GuidedProxy(model, sigmas, run)
        out = original(proxy, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
        if proxy.missed:
            raise RuntimeError(f"Attention Align: guided steps {sorted(proxy.missed)} were never evaluated at their "
                               f"schedule σ by sampler {run.log.sampler}; please report this sampler setup")
        return out
    return sample


def chunked_function(original, run: GuidedRun):
    name = sampler_name(original)
    known = name is not None
    takes_noise = "noise_sampler" in inspect.signature(original).parameters

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = {} if extra_args is None else extra_args
        total = len(sigmas) - 1
        n = max(run.plan.guided, default=-1) + 1
        if n > 0 and takes_noise and kwargs.get("noise_sampler") is None:
            kwargs["noise_sampler"] = _shared_noise_sampler(original, x, sigmas, extra_args.get("seed"))

        def shifted(offset):
            return None if callback is None else (lambda d: callback({**d, "i": d["i"] + offset}))

        def args_for(offset):
            if known or extra_args.get("seed") is None:
                return extra_args
            return {**extra_args, "seed": extra_args["seed"] + offset}  # unknown sampler: no repeated noise

        for i in range(n):
            x = run.step(model, x, i, sigmas[i], extra_args)
            chunk = sigmas[i:i + 2]
            if name in ("dpm_fast", "dpm_adaptive") and float(chunk[-1]) == 0:
                continue  # these stop at the last σ > 0, as the stock run does
            x = original(model, x, chunk, extra_args=args_for(i), callback=shifted(i), disable=True, **kwargs)
        if n < total:
            x = original(model, x, sigmas[n:], extra_args=args_for(n), callback=shifted(n), disable=disable, **kwargs)
        return x
    return sample


def make_sampler_wrapper(guidance: GradientGuidance, log_: GuidanceLog, force_path: str | None = None,
                         verify: bool = False, check=None, read_layers: tuple = (), truncate: bool = True):
    """The SAMPLER_SAMPLE wrapper that guides every sampling run of the model it is set on; ``read_layers`` are the
    replace keys of the layers the objective reads (gradient passes stop after them when ``truncate``)."""
    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                disable_pbar=False):
        sampler = executor.class_obj
        if not isinstance(sampler, comfy.samplers.KSAMPLER):
            raise ValueError(f"sampler: Attention Align guidance needs a k-diffusion sampler (KSAMPLER); "
                             f"got {type(sampler).__name__}")
        path, label = choose_path(sampler, force_path)
        total = len(sigmas) - 1
        run = GuidedRun(guidance, log_, total, verify, check, read_layers, truncate)
        log_.begin_run(guidance.objective.name, label, path, total)
        if path == "chunked" and label in CHUNKED_MODIFIED:
            log_.notes.append(f"{label}: no exact in-place update exists; the {len(run.plan.guided)} guided steps "
                              "run one step at a time (a restarted, lower-order solver there)")
        original = sampler.sampler_function
        sampler.sampler_function = (in_place_function if path == "in_place" else chunked_function)(original, run)
        try:
            return executor(guider, sigmas, extra_args, run.progress.wrap_callback(callback), noise, latent_image,
                            denoise_mask, disable_pbar)
        finally:
            sampler.sampler_function = original
    return wrapper
