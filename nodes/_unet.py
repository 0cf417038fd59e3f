"""Finding a UNet's cross-attention layers and attaching observers to them on a cloned ModelPatcher."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..guidance.attention_patch import CrossAttentionReplace, Editor, Observer
from ..guidance.modulation import SelfAttentionTemperature

#: pixels of the decoded image per latent pixel for the SD families (SD1.x, SD2.x, SDXL)
VAE_FACTOR = 8


@dataclass(frozen=True)
class CrossAttentionLayer:
    key: tuple[str, int, int]   # replace key: (block name, block number, depth index in its SpatialTransformer)
    downsample: int             # latent pixels per map pixel (1, 2, 4, 8)

    @property
    def level(self) -> int:
        """Image pixels per map pixel: 8 for maps at the latent's resolution, 32 for SD1.5's 16×16 at 512 px."""
        return VAE_FACTOR * self.downsample


def unet_of(model_patcher, input_name: str = "model") -> UNetModel:
    """The UNet of a MODEL; raises a clear error for models without UNet cross-attention (DiTs and others)."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if not isinstance(dm, UNetModel):
        kind = type(dm).__name__ if dm is not None else type(model_patcher).__name__
        raise ValueError(f"{input_name}: this model's diffusion network is {kind}, which has no UNet cross-attention "
                         "layers. Attention Align works with UNet models: SD1.x, SD2.x and SDXL.")
    if not any(isinstance(m, SpatialTransformer) for m in dm.modules()):
        raise ValueError(f"{input_name}: this UNet has no cross-attention (SpatialTransformer) layers")
    return dm


def cross_attention_layers(model_patcher, input_name: str = "model") -> list[CrossAttentionLayer]:
    """Every attn2 layer of the UNet in forward order, with its downsampling factor read off the architecture."""
    dm = unet_of(model_patcher, input_name)
    layers: list[CrossAttentionLayer] = []

    def walk(name: str, blocks, ds: int) -> int:
        for number, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    layers.extend(CrossAttentionLayer((name, number, depth), ds)
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
    if not layers:
        raise ValueError(f"{input_name}: no cross-attention layers found in this UNet")
    return layers


def map_size_at(latent_hw: tuple[int, int], downsample: int) -> tuple[int, int]:
    """``(h, w)`` of the maps ``downsample`` latent pixels per map pixel apart: each UNet Downsample is a stride-2
    convolution with padding 1, which rounds odd sizes up (15×9 → 8×5 → 4×3)."""
    h, w = latent_hw
    while downsample > 1:
        h, w, downsample = -(-h // 2), -(-w // 2), downsample // 2
    return h, w


def check_map_size(method, downsample: int, layers: list[CrossAttentionLayer], latent_hw: tuple[int, int]) -> None:
    """Refuse, before any step runs, a level whose maps are too small for ``method`` (its ``min_map_side``) at this
    latent size; the message names the levels that would work."""
    layers_at(layers, VAE_FACTOR * downsample)             # a level the model does not have: that error first
    need = getattr(method, "min_map_side", 1)
    h, w = map_size_at(latent_hw, downsample)
    if min(h, w) >= need:
        return
    image = f"{VAE_FACTOR * latent_hw[1]}×{VAE_FACTOR * latent_hw[0]} px"
    ok = sorted({layer.level for layer in layers if min(map_size_at(latent_hw, layer.downsample)) >= need})
    hint = f"levels that work at this size: {', '.join(map(str, ok))}" if ok else \
        "no cross-attention level of this model is large enough; use a larger image"
    raise ValueError(f"level: at {image} {method.name} reads maps of {h}×{w} at image ÷{VAE_FACTOR * downsample}, "
                     f"but needs at least {need}×{need}; {hint}")


def layers_at(layers: list[CrossAttentionLayer], level: int, input_name: str = "level") -> list[CrossAttentionLayer]:
    """The layers at one image divisor; raises naming the model's levels if it has none there."""
    chosen = [layer for layer in layers if layer.level == level]
    if not chosen:
        available = ", ".join(str(v) for v in sorted({layer.level for layer in layers}))
        raise ValueError(f"{input_name}: this model has no cross-attention at image ÷{level}; its levels are {available}")
    return chosen


def host_attention(q, k, v, heads, **kwargs):
    """ComfyUI's optimized attention as the stock CrossAttention calls it, looked up at call time."""
    return comfy_attention.optimized_attention(q, k, v, heads, **kwargs)


def attach_observer(model_clone, layers: list[CrossAttentionLayer], observer: Observer | None) -> None:
    """Put ``observer`` on the attn2 replace of each layer of ``model_clone`` (a clone the caller owns); with
    ``None``, only make sure the layers carry this pack's replace (per-pass observers then see them).

    A layer that already carries this pack's replace gets a new replace with the observer added; a layer held by
    another pack's replace (under the 3-part or the older 2-part key) is wrapped: that function still computes the
    output and the observer sees probabilities computed from the same q and k.
    """
    to = model_clone.model_options.setdefault("transformer_options", {})
    current = to.get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        key = layer.key
        existing = current.get(key, current.get(key[:2]))
        observers = () if observer is None else (observer,)
        if getattr(existing, "is_attention_align_replace", False):
            if observer is None:
                continue
            replace = existing.with_observer(observer)
        else:
            replace = CrossAttentionReplace(host_attention, observers, inner=existing)
        model_clone.set_model_attn2_replace(replace, key[0], key[1], key[2])


def _existing(model_clone, kind: str, key: tuple[str, int, int]):
    current = model_clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return current.get(key, current.get(key[:2]))


def attach_editor(model_clone, layers: list[CrossAttentionLayer], editor: Editor) -> None:
    """Put ``editor`` on the attn2 replace of each layer; a layer held by another pack's replace cannot be edited."""
    for layer in layers:
        existing = _existing(model_clone, "attn2", layer.key)
        if existing is not None and not getattr(existing, "is_attention_align_replace", False):
            raise ValueError(f"model: cross-attention layer {layer.key} is already replaced by another node pack "
                             f"(e.g. IPAdapter); {editor.name} cannot edit it. Apply it before that pack's node, or "
                             "choose a level without such layers.")
        replace = existing.with_editor(editor) if existing is not None else \
            CrossAttentionReplace(host_attention, editors=(editor,))
        model_clone.set_model_attn2_replace(replace, *layer.key)


def attach_self_temperature(model_clone, layers: list[CrossAttentionLayer], settings) -> None:
    """Self-attention (attn1) temperature on every transformer block; another pack's attn1 replace is wrapped."""
    for layer in layers:
        existing = _existing(model_clone, "attn1", layer.key)
        if isinstance(existing, SelfAttentionTemperature):
            raise ValueError("model: it already carries Attention Modulation's self-attention temperature")
        model_clone.set_model_attn1_replace(SelfAttentionTemperature(host_attention, settings, inner=existing),
                                            *layer.key)
