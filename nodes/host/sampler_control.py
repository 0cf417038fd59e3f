"""How a latent update survives a sampler: the two control flows, as pure code over a step callback.

A k-diffusion sampler function is ``f(model, x, sigmas, extra_args=…, callback=…, disable=…, **kw) → x`` and calls
``model(x, σ, **extra_args)`` to denoise. Guidance needs to change the latent at chosen steps i (before the model is
evaluated at σ_i). ``step(model, x, i, sigma, extra_args) → x_new`` is that change; these wrappers decide *where*
it goes:

* :func:`in_place_function` — for samplers that evaluate the model once per step on their own loop state (euler,
  lms, dpmpp_2m, …): the model handed to the stock function is a proxy that, at the first call at σ_i of a guided
  step, runs ``step`` and writes the result into the sampler's own tensor, so multistep history is kept and a step
  that changes nothing leaves the run bit-identical to the stock sampler.
* :func:`chunked_function` — for everything else: the first ``n`` steps run one step at a time (one noise stream
  shared by all chunks), ``step`` changing the latent between chunks, then the rest in one call.

**Fast mode** (``fast=True`` on both): the step reuses the sampler's own model evaluation at σ_i instead of running
one of its own before it. ``step(model, x, i, sigma, extra_args) → (x_new, denoised)`` then *is* that evaluation: it
returns the model's denoised estimate at x (taken with the gradient the guidance needs) and the updated latent,
which goes into the sampler's state while the sampler continues with the denoised estimate made before the update.

No host import: tests drive both with samplers written in a few lines.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

StepFn = Callable[[Any, torch.Tensor, int, torch.Tensor, dict], torch.Tensor]


class GuidedProxy:
    """Stands in for the denoiser inside a stock sampler function (the in-place path). Attribute reads go to the
    real denoiser; ``missed`` holds the guided steps whose σ the sampler never evaluated."""

    def __init__(self, model, sigmas: torch.Tensor, guided: Iterable[int], step: StepFn, *, fast: bool = False):
        self._model, self._step, self.fast = model, step, fast
        self._pending: dict[float, list[int]] = {}
        for i in sorted(guided):
            self._pending.setdefault(float(sigmas[i]), []).append(i)
        self.missed = set(guided)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, x, sigma, **kwargs):
        steps = self._pending.get(float(sigma.reshape(-1)[0]))
        if steps:
            i = steps.pop(0)
            self.missed.discard(i)
            if self.fast:
                x_new, denoised = self._step(self._model, x, i, sigma, kwargs)
                x.copy_(x_new)                                       # the sampler continues from the update …
                return denoised                                      # … with the estimate made before it
            x.copy_(self._step(self._model, x, i, sigma, kwargs))   # into the sampler's own loop state
        return self._model(x, sigma, **kwargs)


def in_place_function(original: Callable, step: StepFn, guided: Iterable[int], *, label: str = "",
                      fast: bool = False) -> Callable:
    """``original`` with ``step`` applied in place at the guided steps (see the module docstring; ``fast``: the step
    is the sampler's own evaluation). Raises after the run if a guided step's σ was never evaluated (the update would
    have been lost)."""
    guided = frozenset(guided)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        proxy = GuidedProxy(model, sigmas, guided, step, fast=fast)
        out = original(proxy, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
        if proxy.missed:
            raise RuntimeError(f"Attention Align: guided steps {sorted(proxy.missed)} were never evaluated at their "
                               f"schedule σ by sampler {label or getattr(original, '__name__', '?')}; please report "
                               "this sampler setup")
        return out
    return sample


def chunked_function(original: Callable, step: StepFn, n_guided: int, *,
                     noise_sampler: Callable[[torch.Tensor, torch.Tensor, int | None], Callable] | None = None,
                     skip_final_zero: bool = False, reseed: bool = False, fast: bool = False) -> Callable:
    """``original`` run step by step over its first ``n_guided`` steps, ``step`` changing the latent before each.

    ``noise_sampler(x, sigmas, seed)``: builds the one noise stream all chunks share (for samplers that take a
    ``noise_sampler`` and were given none), as the stock function would for the whole run. ``skip_final_zero``: a
    chunk ending at σ = 0 is not run (dpm_fast/dpm_adaptive stop at the last σ > 0, as their stock runs do).
    ``reseed``: a sampler that draws its own noise from ``extra_args["seed"]`` gets ``seed + offset`` per chunk, so
    chunks do not repeat the same noise. The sampler's callback sees step indices of the whole run. ``fast``: each
    guided chunk's first evaluation (at σ_i) is the step (see the module docstring).
    """
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = {} if extra_args is None else extra_args
        total = len(sigmas) - 1
        n = min(n_guided, total)
        if n > 0 and noise_sampler is not None and kwargs.get("noise_sampler") is None:
            kwargs["noise_sampler"] = noise_sampler(x, sigmas, extra_args.get("seed"))

        def shifted(offset):
            return None if callback is None else (lambda d: callback({**d, "i": d["i"] + offset}))

        def args_for(offset):
            if not reseed or extra_args.get("seed") is None:
                return extra_args
            return {**extra_args, "seed": extra_args["seed"] + offset}

        for i in range(n):
            chunk = sigmas[i:i + 2]
            if fast:
                runner = GuidedProxy(model, chunk, [0], lambda m, x_, _k, s, kw, i=i: step(m, x_, i, s, kw), fast=True)
            else:
                x, runner = step(model, x, i, sigmas[i], extra_args), model
            if skip_final_zero and float(chunk[-1]) == 0:
                continue
            x = original(runner, x, chunk, extra_args=args_for(i), callback=shifted(i), disable=True, **kwargs)
        if n < total:
            x = original(model, x, sigmas[n:], extra_args=args_for(n), callback=shifted(n), disable=disable, **kwargs)
        return x
    return sample
