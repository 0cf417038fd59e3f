"""Which of ComfyUI's samplers keeps a latent update in place, and which must be run step by step (chunked).

Measured per sampler (the README's sampler table; ``tests/test_host_engine.py`` checks every name in
``comfy.samplers.KSampler.SAMPLERS``).
"""
from __future__ import annotations

import logging

import comfy.k_diffusion.sampling as kd

log = logging.getLogger("attention_align")

#: one model evaluation per step on the loop state (or extra evaluations never at a schedule σ)
IN_PLACE = frozenset("""euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp lms dpm_2 dpmpp_sde dpmpp_sde_gpu
dpmpp_2m dpmpp_2m_cfg_pp dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde
dpmpp_3m_sde_gpu ddpm lcm ipndm ipndm_v deis res_multistep res_multistep_cfg_pp res_multistep_ancestral
res_multistep_ancestral_cfg_pp gradient_estimation gradient_estimation_cfg_pp er_sde seeds_2 seeds_3""".split())
#: chunked and exact (a second evaluation can land on a schedule σ, where an in-place write would be lost)
CHUNKED_EXACT = frozenset({"heun", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp"})
#: the next state is built from the model's estimate alone (x₊ = D(x) + σ₊·noise): fast mode, whose update keeps the
#: estimate made before it, would never reach the image with these, so it refuses them
ESTIMATE_ONLY = frozenset({"lcm"})
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


def sampler_label(sampler) -> str:
    """The sampler's name for logs: ComfyUI's name, ``ddim`` for euler with random inpainting noise, else the
    function's own name."""
    function = getattr(sampler, "sampler_function", None)
    name = sampler_name(function)
    if name == "euler" and getattr(sampler, "inpaint_options", {}).get("random"):
        return "ddim"                      # ComfyUI's ddim is euler with random inpainting noise
    return name or getattr(function, "__name__", type(sampler).__name__)


def choose_path(sampler) -> tuple[str, str]:
    """(path, sampler name for logs): ``in_place`` or ``chunked`` for a KSAMPLER."""
    name = sampler_name(sampler.sampler_function)
    churn = float(sampler.extra_options.get("s_churn", 0) or 0)
    label = sampler_label(sampler)
    if name in IN_PLACE and not churn:
        return "in_place", label
    if name is None:
        log.info("Attention Align: sampler function %s is not one of ComfyUI's; guiding it step by step (chunked)",
                 label)
    return "chunked", label
