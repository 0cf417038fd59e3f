"""Attaching gradient guidance to a model clone (shared by the MODEL-patch node and the Guided KSampler)."""
from __future__ import annotations

import torch
from comfy.patcher_extension import WrappersMP

from ..guidance.engine import GuidanceLog
from ..guidance.method import GradientGuidance
from ._sampling import WRAPPER_KEY, make_sampler_wrapper
from ._unet import VAE_FACTOR, attach_observer, cross_attention_layers, layers_at


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


def guided_model(model, guidance: GradientGuidance, force_path: str | None = None, verify: bool = False):
    """Clone ``model`` and attach ``guidance``; returns (clone, its GuidanceLog handle)."""
    layers = layers_at(cross_attention_layers(model), VAE_FACTOR * guidance.objective.downsample)
    if WRAPPER_KEY in model.wrappers.get(WrappersMP.SAMPLER_SAMPLE, {}):
        raise ValueError("model: it already carries Attention Align guidance; apply one guidance per model")
    m = model.clone()
    attach_observer(m, layers, None)
    log = GuidanceLog()
    check = prompt_check(getattr(guidance.objective, "context", None))
    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                           make_sampler_wrapper(guidance, log, force_path, verify, check))
    return m, log
