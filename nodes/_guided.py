"""Attaching a GUIDANCE or a capture to a model clone — shared by Capture Cross-Attention, Apply Guidance and the
Guided KSampler. Every kind goes through the same :func:`~._session.attach`; only what a kind needs besides
(gradient guidance: the SAMPLER_SAMPLE wrapper; Modulation: the self-attention temperature) is added here."""
from __future__ import annotations

import torch
from comfy.patcher_extension import WrappersMP

from ..guidance.maps import CaptureMaps
from ..guidance.method import AttentionEditGuidance, GradientGuidance
from ..guidance.session import RunBoard
from ._dit import attention_layers, blocks_chosen, dit_of, joint_layers
from ._fast import calc_cond_batch_wrapper
from ._gradient_run import sampler_wrapper
from ._session import attach
from ._unet import (
    attach_self_temperature,
    check_map_size,
    cross_attention_layers,
    layer_levels,
    layers_at,
    level_map,
    reclaim_self_temperature,
)

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


def map_size_check(method, level: int, every_layer):
    """A check, at the start of each run, that the maps at ``level`` are large enough for ``method``."""
    def check(guider, noise) -> None:
        check_map_size(method, level, every_layer, tuple(noise.shape[-2:]))
    return check


def check_sizes(guidance, layers, latent_hw: tuple[int, int]) -> None:
    """Refuse a level whose maps are too small for the method at this latent size (before loading anything)."""
    if isinstance(guidance, GradientGuidance):
        check_map_size(guidance.objective, guidance.level, layers, latent_hw)
    elif isinstance(guidance, AttentionEditGuidance) and guidance.cross_editor is not None \
            and guidance.cross_level is not None:
        check_map_size(guidance.cross_editor, guidance.cross_level, layers, latent_hw)


def _checks(guidance, every_layer):
    method = guidance.objective if isinstance(guidance, GradientGuidance) else guidance.cross_editor
    level = guidance.level if isinstance(guidance, GradientGuidance) else guidance.cross_level
    checks = [map_size_check(method, level, every_layer)] if method is not None and level is not None else []
    context = getattr(guidance.objective, "context", None) if isinstance(guidance, GradientGuidance) \
        else guidance.context
    check = prompt_check(context)
    return checks + ([check] if check is not None else [])


def guided_model(model, guidance, *, verify: bool = False, truncate: bool = True) -> tuple[object, RunBoard]:
    """Clone ``model`` and attach ``guidance`` (gradient or attention-edit); returns (clone, the board its runs'
    GUIDANCE_LOG records go to).

    ``truncate``: gradient passes stop after the last layer the loss reads (same loss and gradient, less work).
    ``verify``: each guided step also measures the loss after its update (tests)."""
    if isinstance(guidance, AttentionEditGuidance):
        return edited_model(model, guidance)
    if not isinstance(guidance, GradientGuidance):
        raise ValueError(f"guidance: expected a GUIDANCE from one of the pack's method nodes, got {type(guidance)}")
    every_layer = attention_layers(model)                    # a UNet's attn2 layers or a DiT's joint blocks
    layers = blocks_chosen(layers_at(every_layer, guidance.level), guidance.dit_blocks)  # the pass stops after them
    if GRADIENT_KEY in model.wrappers.get(WrappersMP.SAMPLER_SAMPLE, {}):
        raise ValueError("model: it already carries Attention Align gradient guidance; apply one gradient method "
                         "per model")
    m = model.clone()
    board, attachment = attach(m, guidance, level_map(layers), kind="Apply Guidance",
                               checks=_checks(guidance, every_layer))
    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, GRADIENT_KEY,
                           sampler_wrapper(attachment, verify=verify, truncate=truncate))
    if guidance.fast:
        m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, GRADIENT_KEY, calc_cond_batch_wrapper(attachment))
    return m, board


def edited_model(model, guidance: AttentionEditGuidance) -> tuple[object, RunBoard]:
    """Clone ``model`` with an attention edit (and Modulation's self-attention temperature) attached: on a UNet's
    attn2 (and attn1) layers, on a DiT's joint-attention blocks (where the editors also carry the temperature)."""
    dm = dit_of(model)
    if getattr(guidance.cross_editor, "joint", False) and dm is None:  # an edit made for DiT joint attention only
        raise ValueError(f"model: {guidance.name} edits the joint attention of DiT models (Flux, SD3/SD3.5); "
                         "this model is a UNet (SD1.x, SD2.x, SDXL), whose text enters through cross-attention")
    if dm is not None:
        every_layer = joint_layers(dm)
        layers = every_layer if guidance.cross_level is None else layers_at(every_layer, guidance.cross_level)
        layers = blocks_chosen(layers, guidance.dit_blocks)
        m = model.clone()
        board, _ = attach(m, guidance, level_map(layers), kind="Apply Guidance",
                          checks=_checks(guidance, every_layer))
        return m, board
    every_layer = cross_attention_layers(model)
    chosen = every_layer if guidance.cross_level is None else layers_at(every_layer, guidance.cross_level)
    m = model.clone()
    settings = guidance.self_settings
    prepare = ()
    if settings is not None and settings.temperature != 1.0:
        attach_self_temperature(m, every_layer, settings)
        prepare = (lambda options: reclaim_self_temperature(options, every_layer, settings),)
    board, _ = attach(m, guidance, level_map(chosen if guidance.cross_editor is not None else []),
                      kind="Apply Guidance", checks=_checks(guidance, every_layer), prepare=prepare)
    return m, board


def captured_model(model, level: int | None, *, keep_steps: bool = False) -> tuple[object, RunBoard]:
    """Clone ``model`` with a capture of the positive prompt's maps at ``level`` (None: every level)."""
    every_layer = attention_layers(model)
    layers = every_layer if level is None else layers_at(every_layer, level)
    m = model.clone()
    board, _ = attach(m, CaptureMaps(keep_steps=keep_steps), level_map(layers), kind="Capture Cross-Attention")
    return m, board


def default_level(guidance, model) -> int:
    """The level whose maps the Guided KSampler returns: the one the method reads, or for an edit of every level
    the papers' 32 where the model has it, else its coarsest level."""
    level = guidance.level if isinstance(guidance, GradientGuidance) else guidance.cross_level
    if level is not None:
        return level
    levels = layer_levels(attention_layers(model))           # a DiT's joint blocks: 16 only
    return 32 if 32 in levels else max(levels)

