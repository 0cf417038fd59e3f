"""Attaching a GUIDANCE to a model clone — gradient guidance (T-SAM, A&E, SynGen) or an attention edit (Attention
Regulation, Attention Modulation) — shared by the Apply Guidance node and the Guided KSampler."""
from __future__ import annotations

import torch
from comfy.patcher_extension import WrappersMP

from ..guidance.engine import GuidanceLog, StepRecord
from ..guidance.method import AttentionEditGuidance, GradientGuidance
from ._sampling import WRAPPER_KEY, make_sampler_wrapper
from ._unet import (VAE_FACTOR, attach_editor, attach_observer, attach_self_temperature, check_map_size,
                    cross_attention_layers, layers_at)

EDIT_WRAPPER_KEY = "attention_align_edit"


def prompt_check(context: torch.Tensor | None):
    """A check of the sampler's positive conditioning against the prompt the objective's T came from."""
    if context is None:
        return None

    def check(conds: list[dict]) -> None:
        cross = conds[0].get("model_conds", {}).get("c_crossattn")
        tensor = getattr(cross, "cond", None)
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
    """Refuse a level whose maps are too small for the method at this latent size, before any step runs."""
    if isinstance(guidance, GradientGuidance):
        check_map_size(guidance.objective, guidance.objective.downsample, layers, latent_hw)
    elif isinstance(guidance, AttentionEditGuidance) and guidance.cross_editor is not None \
            and guidance.cross_downsample is not None:
        check_map_size(guidance.cross_editor, guidance.cross_downsample, layers, latent_hw)


def guided_model(model, guidance, force_path: str | None = None, verify: bool = False, truncate: bool = True):
    """Clone ``model`` and attach ``guidance`` (gradient or attention-edit); returns (clone, its GuidanceLog).

    ``truncate``: gradient passes stop after the last layer the loss reads (same loss and gradient, less work)."""
    if isinstance(guidance, AttentionEditGuidance):
        return edited_model(model, guidance)
    if not isinstance(guidance, GradientGuidance):
        raise ValueError(f"guidance: expected a GUIDANCE from one of the pack's method nodes, got {type(guidance)}")
    every_layer = cross_attention_layers(model)
    layers = layers_at(every_layer, VAE_FACTOR * guidance.objective.downsample)
    if WRAPPER_KEY in model.wrappers.get(WrappersMP.SAMPLER_SAMPLE, {}):
        raise ValueError("model: it already carries Attention Align gradient guidance; apply one gradient method "
                         "per model")
    m = model.clone()
    attach_observer(m, layers, None)
    log = GuidanceLog()
    check = prompt_check(getattr(guidance.objective, "context", None))
    guide = make_sampler_wrapper(guidance, log, force_path, verify, check, tuple(layer.key for layer in layers),
                                 truncate)

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        check_sizes(guidance, every_layer, tuple(noise.shape[-2:]))
        return guide(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs)

    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, wrapper)
    return m, log


def edited_model(model, guidance: AttentionEditGuidance):
    """Clone ``model`` with an attention editor (and Modulation's self-attention temperature) attached."""
    layers = cross_attention_layers(model)
    m = model.clone()
    editor = guidance.cross_editor.fresh() if guidance.cross_editor is not None else None
    if editor is not None:
        chosen = layers if guidance.cross_downsample is None else \
            layers_at(layers, VAE_FACTOR * guidance.cross_downsample)
        attach_editor(m, chosen, editor)
    settings = guidance.self_settings
    if settings is not None and settings.temperature != 1.0:
        attach_self_temperature(m, layers, settings)
    log = GuidanceLog()
    check = prompt_check(guidance.context)

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        check_sizes(guidance, layers, tuple(noise.shape[-2:]))
        if check is not None:
            check(guider.conds.get("positive") or [{}])
        if hasattr(editor, "begin_run"):
            editor.begin_run()
        log.begin_run(guidance.name, type(executor.class_obj).__name__, "attention edit", len(sigmas) - 1)
        try:
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        finally:
            for step, pairs in sorted(getattr(editor, "losses", {}).items()):    # Attention Regulation's own loss
                before, after = (sum(v) / len(v) for v in zip(*pairs))
                log.steps.append(StepRecord(step, float(sigmas[min(step, len(sigmas) - 1)]), 0.0,
                                            [torch.tensor([before]), torch.tensor([after])]))

    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, EDIT_WRAPPER_KEY, wrapper)
    return m, log
