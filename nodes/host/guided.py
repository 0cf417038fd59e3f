"""Attaching a GUIDANCE or a capture to a model clone — shared by Capture Cross-Attention, Apply Guidance and the
Guided KSampler. Every kind goes through the same :func:`~.attach.attach` with the model's
:class:`~.backend.Backend`; only what a kind needs besides (gradient guidance: the SAMPLER_SAMPLE wrapper, and fast
mode's CALC_COND_BATCH wrapper; Modulation on a UNet: the self-attention temperature) is added here.

Both kinds of GUIDANCE answer the same three questions: ``level`` (the maps it reads or edits; None: every level),
``map_user`` (what the size check asks for its ``min_map_side``) and ``context`` (the prompt its token positions
belong to).
"""
from __future__ import annotations

import torch
from comfy.patcher_extension import WrappersMP

from ...guidance.maps import CaptureMaps
from ...guidance.method import AttentionEditGuidance, GradientGuidance
from .attach import attach
from .backend import Backend, backend_of, check_map_size, layer_levels, layers_at, level_map
from .context import RunBoard
from .fast import calc_cond_batch_wrapper
from .gradient_run import GradientMethod, sampler_wrapper

GRADIENT_KEY = "attention_align_gradient"


def prompt_check(context: torch.Tensor | None):
    """A check, at the start of each run, of the sampler's positive conditioning against the prompt the method's
    token positions (and T-SAM's T) came from."""
    if context is None:
        return None

    def check(guider, noise) -> None:
        conds = getattr(guider, "conds", {}).get("positive") or [{}]
        tensor = conds[0].get("cross_attn")                      # before the run processes it into model_conds
        if tensor is None:
            tensor = getattr(conds[0].get("model_conds", {}).get("c_crossattn"), "cond", None)
        if tensor is None:
            return
        n = context.shape[1]
        same = tensor.shape[1] >= n and tensor.shape[-1] == context.shape[-1] and torch.allclose(
            tensor[0, :n].float().cpu(), context[0], rtol=1e-3, atol=1e-3)
        if not same:
            raise ValueError("positive: the positive conditioning is not the prompt text_attention was made from. "
                             "Use the CONDITIONING output of the Text Self-Attention node as the positive prompt "
                             "(same CLIP, same text).")
    return check


def check_sizes(guidance, layers, latent_hw: tuple[int, int]) -> None:
    """Refuse a level whose maps are too small for the method at this latent size (before loading anything)."""
    if guidance.map_user is not None and guidance.level is not None:
        check_map_size(guidance.map_user, guidance.level, layers, latent_hw)


def _checks(guidance, every_layer) -> list:
    """What each run checks first: the map size at the latent's size, and the positive prompt."""
    checks = [lambda guider, noise: check_sizes(guidance, every_layer, tuple(noise.shape[-2:]))]
    check = prompt_check(guidance.context)
    return checks + ([check] if check is not None else [])


def _chosen(backend: Backend, every_layer, guidance):
    """The layers a guidance reads or edits: those at its level (every layer for None), as its DiT blocks say."""
    layers = every_layer if guidance.level is None else layers_at(every_layer, guidance.level)
    return backend.choose(layers, guidance.dit_blocks)


def guided_model(model, guidance, *, verify: bool = False, truncate: bool = True) -> tuple[object, RunBoard]:
    """Clone ``model`` and attach ``guidance`` (gradient or attention-edit); returns (clone, the board its runs'
    GUIDANCE_LOG records go to).

    ``truncate``: gradient passes stop after the last layer the loss reads (same loss and gradient, less work).
    ``verify``: each guided step also measures the loss after its update (tests)."""
    if isinstance(guidance, AttentionEditGuidance):
        return edited_model(model, guidance)
    if not isinstance(guidance, GradientGuidance):
        raise ValueError(f"guidance: expected a GUIDANCE from one of the pack's method nodes, got {type(guidance)}")
    backend = backend_of(model)
    every_layer = backend.layers()
    layers = _chosen(backend, every_layer, guidance)        # the gradient pass stops after the last of them
    if GRADIENT_KEY in model.wrappers.get(WrappersMP.SAMPLER_SAMPLE, {}):
        raise ValueError("model: it already carries Attention Align gradient guidance; apply one gradient method "
                         "per model")
    m = model.clone()
    board, attachment = attach(m, GradientMethod(guidance, verify=verify, truncate=truncate), backend,
                               level_map(layers), kind="Apply Guidance", checks=_checks(guidance, every_layer))
    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, GRADIENT_KEY, sampler_wrapper(attachment))
    if guidance.fast:
        m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, GRADIENT_KEY, calc_cond_batch_wrapper(attachment))
    return m, board


def edited_model(model, guidance: AttentionEditGuidance) -> tuple[object, RunBoard]:
    """Clone ``model`` with an attention edit attached: on a UNet's attn2 layers (and Modulation's self-attention
    temperature on its attn1 layers), on a DiT's joint-attention blocks (where the edit carries the temperature)."""
    backend = backend_of(model)
    if guidance.edit is not None and guidance.edit.dit_only and backend.kind != "dit":
        raise ValueError(f"model: {guidance.name} edits the joint attention of DiT models (Flux, SD3/SD3.5); "
                         "this model is a UNet (SD1.x, SD2.x, SDXL), whose text enters through cross-attention")
    every_layer = backend.layers()
    layers = _chosen(backend, every_layer, guidance) if guidance.edit is not None else []
    m = model.clone()
    prepare = ()
    settings = guidance.self_settings
    if backend.kind == "unet" and settings is not None and settings.temperature != 1.0:
        backend.install_self_temperature(m, settings)
        prepare = (lambda options: backend.reclaim_self_temperature(options, settings),)
    board, _ = attach(m, guidance, backend, level_map(layers), kind="Apply Guidance",
                      checks=_checks(guidance, every_layer), prepare=prepare)
    return m, board


def captured_model(model, level: int | None, *, keep_steps: bool = False) -> tuple[object, RunBoard]:
    """Clone ``model`` with a capture of the positive prompt's maps at ``level`` (None: every level)."""
    backend = backend_of(model)
    every_layer = backend.layers()
    layers = every_layer if level is None else layers_at(every_layer, level)
    m = model.clone()
    board, _ = attach(m, CaptureMaps(keep_steps=keep_steps), backend, level_map(layers),
                      kind="Capture Cross-Attention")
    return m, board


def default_level(guidance, model) -> int:
    """The level whose maps the Guided KSampler returns: the one the method reads, or for an edit of every level
    the papers' 32 where the model has it, else its coarsest level."""
    if guidance.level is not None:
        return guidance.level
    levels = layer_levels(backend_of(model).layers())           # a DiT's joint blocks: 16 only
    return 32 if 32 in levels else max(levels)
