"""Finding a UNet's cross-attention layers, their levels and map sizes; the host's attention kernel."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..guidance.modulation import SelfAttentionTemperature

#: pixels of the decoded image per latent pixel for the SD families (SD1.x, SD2.x, SDXL)
VAE_FACTOR = 8


@dataclass(frozen=True)
class CrossAttentionLayer:
    key: tuple[str, int, int]   # replace key: (block name, block number, depth index in its SpatialTransformer)
    level: int                  # image pixels per map pixel: 8 at the latent's resolution, 32 for SD1.5's 16×16 at 512 px


def unet_of(model_patcher, input_name: str = "model") -> UNetModel:
    """The UNet of a MODEL; raises a clear error for models without UNet cross-attention (DiTs and others)."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if not isinstance(dm, UNetModel):
        kind = type(dm).__name__ if dm is not None else type(model_patcher).__name__
        raise ValueError(f"{input_name}: this model's diffusion network is {kind}, which has no UNet cross-attention "
                         "layers. This works with UNet models: SD1.x, SD2.x and SDXL (Flux and SD3/SD3.5 go through "
                         "their joint-attention blocks instead).")
    if not any(isinstance(m, SpatialTransformer) for m in dm.modules()):
        raise ValueError(f"{input_name}: this UNet has no cross-attention (SpatialTransformer) layers")
    return dm


def cross_attention_layers(model_patcher, input_name: str = "model") -> list[CrossAttentionLayer]:
    """Every attn2 layer of the model's UNet in forward order, with its downsampling factor read off the
    architecture."""
    layers = unet_layers(unet_of(model_patcher, input_name))
    if not layers:
        raise ValueError(f"{input_name}: no cross-attention layers found in this UNet")
    return layers


def unet_layers(dm: UNetModel) -> list[CrossAttentionLayer]:
    """Every attn2 layer of a ``UNetModel`` in forward order (input blocks, middle, output blocks), its level counted
    from the Downsample / Upsample modules passed on the way."""
    layers: list[CrossAttentionLayer] = []

    def walk(name: str, blocks, ds: int) -> int:
        for number, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    layers.extend(CrossAttentionLayer((name, number, depth), VAE_FACTOR * ds)
                                  for depth, tb in enumerate(module.transformer_blocks) if tb.attn2 is not None)
                elif isinstance(module, Downsample):
                    ds *= 2
                elif isinstance(module, Upsample):
                    ds //= 2
        return ds

    ds = walk("input", dm.input_blocks, 1)
    if dm.middle_block is not None:
        walk("middle", [dm.middle_block], ds)
    walk("output", dm.output_blocks, ds)
    return layers


def map_size_at(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """``(h, w)`` of the maps at ``level`` (image pixels per map pixel) for a latent of ``latent_hw``: each UNet
    Downsample is a stride-2 convolution with padding 1, which rounds odd sizes up (15×9 → 8×5 → 4×3)."""
    h, w = latent_hw
    downsample = level // VAE_FACTOR                     # latent pixels per map pixel
    while downsample > 1:
        h, w, downsample = -(-h // 2), -(-w // 2), downsample // 2
    return h, w


def check_map_size(method, level: int, layers: list[CrossAttentionLayer], latent_hw: tuple[int, int]) -> None:
    """Refuse, before any step runs, a level whose maps are too small for ``method`` (its ``min_map_side``) at this
    latent size; the message names the levels that would work."""
    layers_at(layers, level)                               # a level the model does not have: that error first
    need = getattr(method, "min_map_side", 1)
    h, w = map_size_at(latent_hw, level)
    if min(h, w) >= need:
        return
    image = f"{VAE_FACTOR * latent_hw[1]}×{VAE_FACTOR * latent_hw[0]} px"
    ok = sorted({layer.level for layer in layers if min(map_size_at(latent_hw, layer.level)) >= need})
    hint = f"levels that work at this size: {', '.join(map(str, ok))}" if ok else \
        "no cross-attention level of this model is large enough; use a larger image"
    raise ValueError(f"level: at {image} {method.name} reads maps of {h}×{w} at image ÷{level}, "
                     f"but needs at least {need}×{need}; {hint}")


def layers_at(layers: list[CrossAttentionLayer], level: int, input_name: str = "level") -> list[CrossAttentionLayer]:
    """The layers at one image divisor; raises naming the model's levels if it has none there."""
    chosen = [layer for layer in layers if layer.level == level]
    if not chosen:
        available = ", ".join(str(v) for v in sorted({layer.level for layer in layers}))
        raise ValueError(f"{input_name}: this model has no cross-attention at image ÷{level}; its levels are {available}")
    return chosen


def layer_levels(layers: list[CrossAttentionLayer]) -> list[int]:
    """The distinct levels of ``layers``, finest first."""
    return sorted({layer.level for layer in layers})


def level_map(layers: list[CrossAttentionLayer]) -> dict[tuple[str, int, int], int]:
    """``{replace key: level}`` of ``layers`` (what a method's per-run state is given)."""
    return {layer.key: layer.level for layer in layers}


def host_attention(q, k, v, heads, **kwargs):
    """ComfyUI's optimized attention as the stock CrossAttention calls it, looked up at call time."""
    return comfy_attention.optimized_attention(q, k, v, heads, **kwargs)


def attach_self_temperature(model_clone, layers: list[CrossAttentionLayer], settings) -> None:
    """Self-attention (attn1) temperature on every transformer block of ``layers``, installed per block under the
    2-part key (one replace serves every depth of a block; it reads the depth from the call). A 2-part replace of
    another pack found there is wrapped. The 2-part key is chosen so that a pack that puts its own attn1 replace
    under the 2-part key for one extra pass only (core's and sd-perturbed-attention's PAG) still replaces it in that
    pass; a 3-part replace of another pack is wrapped at the start of each run (:func:`reclaim_self_temperature`)."""
    to = model_clone.model_options.setdefault("transformer_options", {})
    current = to.get("patches_replace", {}).get("attn1", {})
    for block in sorted({layer.key[:2] for layer in layers}):
        existing = current.get(block)
        if isinstance(existing, SelfAttentionTemperature):
            raise ValueError("model: it already carries Attention Modulation's self-attention temperature")
        model_clone.set_model_attn1_replace(SelfAttentionTemperature(host_attention, settings, inner=existing), *block)


def reclaim_self_temperature(model_options: dict, layers: list[CrossAttentionLayer], settings) -> None:
    """At the start of a run (``model_options``: the run's own copy): a layer whose attn1 another pack replaced
    under the 3-part key (which core calls instead of the block's 2-part one, e.g. core's SAG) gets, for this run,
    the temperature wrapped around that replace, so both apply."""
    replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    attn1 = dict(replaces.get("attn1", {}))
    changed = False
    for layer in layers:
        full = attn1.get(layer.key)
        if full is not None and not isinstance(full, SelfAttentionTemperature):
            attn1[layer.key], changed = SelfAttentionTemperature(host_attention, settings, inner=full), True
    if changed:
        replaces["attn1"] = attn1
