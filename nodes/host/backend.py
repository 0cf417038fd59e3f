"""The model side of the pack: which attention layers a model has, at which level, and how the pack's routers
(``routers.py``) are installed on a clone — one interface, :class:`Backend`, with an adapter per kind of network.

* :class:`UNetBackend` (SD1.x, SD2.x, SDXL): every attn2 layer of the UNet, its level counted from the Downsample /
  Upsample modules on the way (never guessed from map sizes, which coincide at small sizes); the router is an attn2
  replace under the layer's 3-part key. Attention Modulation's self-attention temperature is an attn1 replace.
* :class:`DiTBackend` (Flux, SD3/SD3.5's MMDiT): every joint-attention block, all at image ÷ (8 × patch size); the
  router is a block replace (``patches_replace["dit"]``), and an ``APPLY_MODEL`` wrapper tells each model call where
  its text and image tokens sit.

Layer keys are ``(block name, block number, depth index)``: ``("input", 7, 0)`` on a UNet, ``("double", i, 0)`` and
``("single", i, 0)`` on a DiT (SD3's joint blocks are "double"). A layer's *level* is the image pixels per map pixel:
8 at the latent's resolution, 32 for SD1.5's 16×16 maps at 512 px, 16 for every DiT block.

:meth:`Backend.install` routes the layers in a clone's own options (``clone()`` deep-copied them);
:meth:`Backend.reclaim` does it again in each run's copy of the options, taking over another pack's replace that was
installed later (see :meth:`UNetBackend.reclaim`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample
from comfy.patcher_extension import WrappersMP

from ...guidance.attention import LayerKey
from .routers import GEOMETRY_KEY, CrossAttentionReplace, JointBlockRouter, JointGeometry, SelfAttentionTemperature

#: pixels of the decoded image per latent pixel for the SD families (SD1.x, SD2.x, SDXL) and the DiTs the pack reads
VAE_FACTOR = 8
SUPPORTED = "SD1.x, SD2.x and SDXL (UNet), Flux (dev, schnell, Kontext) and SD3/SD3.5 (MMDiT)"
#: the ComfyUI block-replace names of each DiT layer-key block name
REPLACE_NAME = {"double": "double_block", "single": "single_block"}


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer the pack can read: a UNet's attn2 layer or a DiT's joint-attention block."""

    key: LayerKey               # (block name, block number, depth index)
    level: int                  # image pixels per map pixel: 8 at the latent's resolution, 32 for SD1.5's 16×16 at 512 px


class Backend:
    """The attention layers of one model and how the pack routes them (module docstring)."""

    kind: str = ""              # "unet" or "dit"

    def layers(self) -> list[AttentionLayer]:
        """Every layer whose image→text attention the pack can read, in forward order."""
        raise NotImplementedError

    def choose(self, layers: list[AttentionLayer], dit_blocks: str) -> list[AttentionLayer]:
        """``layers`` as a method's ``dit_blocks`` input picks them (only a DiT has a choice)."""
        return layers

    def install(self, model_clone, keys: Iterable[LayerKey], *, editing: bool) -> None:
        """Route ``keys`` through the pack on ``model_clone`` (its own options), with what the routers need per call."""
        self.reclaim(model_clone.model_options, keys, editing=editing)

    def reclaim(self, model_options: dict, keys: Iterable[LayerKey], *, editing: bool) -> None:
        """Make sure each layer of ``keys`` is routed through the pack in these options (a clone's, or one run's
        copy); ``editing``: a method changes the attention there, which another pack's opaque replace would hide."""
        raise NotImplementedError


def backend_of(model_patcher, input_name: str = "model") -> Backend:
    """The :class:`Backend` of a MODEL; raises naming the model for a network the pack does not support."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if isinstance(dm, UNetModel):
        return UNetBackend(model_patcher, input_name)
    return DiTBackend(model_patcher, input_name)


# -- UNet ---------------------------------------------------------------------------------------------------------------
class UNetBackend(Backend):
    """SD1.x, SD2.x and SDXL: the UNet's attn2 layers."""

    kind = "unet"

    def __init__(self, model_patcher, input_name: str = "model"):
        self.unet = unet_of(model_patcher, input_name)
        self.input_name = input_name

    def layers(self) -> list[AttentionLayer]:
        layers = unet_layers(self.unet)
        if not layers:
            raise ValueError(f"{self.input_name}: no cross-attention layers found in this UNet")
        return layers

    def reclaim(self, model_options: dict, keys: Iterable[LayerKey], *, editing: bool) -> None:
        """Core calls the replace at the 3-part key if there is one, else the 2-part key. A replace installed after
        the pack's router can therefore drop it (the same 3-part key, overwritten: PLADIS, DAAM's sampler) or be
        dropped by it (a 2-part key the router's 3-part key shadows: IPAdapter on SD1.5). For this run only, such a
        layer gets a router that takes the other replace over (see :func:`_router_over`), so both run. An edit cannot
        go through another pack's opaque replace: that is refused naming the pack and what to do."""
        replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
        attn2 = dict(replaces.get("attn2", {}))
        changed = False
        for key in keys:
            full, short = attn2.get(key), attn2.get(key[:2])
            if getattr(full, "is_attention_align_replace", False):
                if short is None or short is full.inner or any(short is a for a in full.absorbed) \
                        or getattr(short, "is_attention_align_replace", False):
                    router = full
                elif full.inner is None:                              # ours shadows a 2-part key installed later
                    router = _router_over(full.attention_fn, short, carried=full)
                    attn2[key], changed = router, True
                else:
                    raise ValueError(f"model: layer {key} carries {_describe(full.inner)} and {_describe(short)}, two "
                                     "other packs' replaces of its cross-attention; only one can run beside Attention "
                                     "Align")
            else:
                router = _router_over(host_attention, full if full is not None else short)
                attn2[key], changed = router, True
            if editing and router.inner is not None:
                raise ValueError(f"model: cross-attention layer {key} is already replaced by another node pack "
                                 f"({_describe(router.inner)}); an attention edit cannot go through it. Apply the edit "
                                 "(Attention Regulation / Modulation) before that pack's node, or choose a level "
                                 "without such layers.")
        if changed:
            replaces["attn2"] = attn2

    def install_self_temperature(self, model_clone, settings) -> None:
        """Attention Modulation's self-attention (attn1) temperature on every transformer block, installed per block
        under the 2-part key (one replace serves every depth of a block; it reads the depth from the call). A 2-part
        replace of another pack found there is wrapped. The 2-part key is chosen so that a pack that puts its own
        attn1 replace under the 2-part key for one extra pass only (core's and sd-perturbed-attention's PAG) still
        replaces it in that pass; a 3-part replace of another pack is wrapped at the start of each run
        (:meth:`reclaim_self_temperature`)."""
        to = model_clone.model_options.setdefault("transformer_options", {})
        current = to.get("patches_replace", {}).get("attn1", {})
        for block in sorted({layer.key[:2] for layer in self.layers()}):
            existing = current.get(block)
            if isinstance(existing, SelfAttentionTemperature):
                raise ValueError("model: it already carries Attention Modulation's self-attention temperature")
            model_clone.set_model_attn1_replace(SelfAttentionTemperature(host_attention, settings, inner=existing),
                                                *block)

    def reclaim_self_temperature(self, model_options: dict, settings) -> None:
        """At the start of a run (``model_options``: the run's own copy): a layer whose attn1 another pack replaced
        under the 3-part key (which core calls instead of the block's 2-part one, e.g. core's SAG) gets, for this
        run, the temperature wrapped around that replace, so both apply."""
        replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
        attn1 = dict(replaces.get("attn1", {}))
        changed = False
        for layer in self.layers():
            full = attn1.get(layer.key)
            if full is not None and not isinstance(full, SelfAttentionTemperature):
                attn1[layer.key], changed = SelfAttentionTemperature(host_attention, settings, inner=full), True
        if changed:
            replaces["attn1"] = attn1


# -- DiT ----------------------------------------------------------------------------------------------------------------
class DiTBackend(Backend):
    """Flux (dev, schnell, Kontext) and SD3/SD3.5 (MMDiT): the joint-attention blocks."""

    kind = "dit"

    def __init__(self, model_patcher, input_name: str = "model"):
        self.dm = dit_of(model_patcher, input_name)

    def layers(self) -> list[AttentionLayer]:
        return joint_layers(self.dm)

    def choose(self, layers: list[AttentionLayer], dit_blocks: str) -> list[AttentionLayer]:
        """all blocks, or (``double``) the double-stream ones only — Flux's 19; all of SD3's."""
        return [layer for layer in layers if layer.key[0] == "double"] if dit_blocks == "double" else layers

    def install(self, model_clone, keys: Iterable[LayerKey], *, editing: bool) -> None:
        super().install(model_clone, keys, editing=editing)
        if GEOMETRY_KEY not in model_clone.wrappers.get(WrappersMP.APPLY_MODEL, {}):   # once per clone
            model_clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, GEOMETRY_KEY, JointGeometry(self.dm.patch_size))

    def reclaim(self, model_options: dict, keys: Iterable[LayerKey], *, editing: bool) -> None:
        """A block without the pack's router gets one, taking over a replace another pack put there (an edit reaches
        the attention through the override the router hands the block, also when another pack's replace runs it)."""
        replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
        dit = dict(replaces.get("dit", {}))
        changed = False
        for key in keys:
            replace_key = (REPLACE_NAME[key[0]], key[1])
            current = dit.get(replace_key)
            if not getattr(current, "is_attention_align_replace", False):
                dit[replace_key], changed = JointBlockRouter((key[0], key[1]), inner=current), True
        if changed:
            replaces["dit"] = dit


# -- levels ---------------------------------------------------------------------------------------------------------------
def map_size_at(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """``(h, w)`` of the maps at ``level`` (image pixels per map pixel) for a latent of ``latent_hw``: each UNet
    Downsample is a stride-2 convolution with padding 1, which rounds odd sizes up (15×9 → 8×5 → 4×3)."""
    h, w = latent_hw
    downsample = level // VAE_FACTOR                     # latent pixels per map pixel
    while downsample > 1:
        h, w, downsample = -(-h // 2), -(-w // 2), downsample // 2
    return h, w


def check_map_size(method, level: int, layers: list[AttentionLayer], latent_hw: tuple[int, int]) -> None:
    """Refuse, before any step runs, a level whose maps are too small for ``method`` (its ``min_map_side``) at this
    latent size; the message names the levels that would work."""
    layers_at(layers, level)                               # a level the model does not have: that error first
    need = method.min_map_side
    h, w = map_size_at(latent_hw, level)
    if min(h, w) >= need:
        return
    image = f"{VAE_FACTOR * latent_hw[1]}×{VAE_FACTOR * latent_hw[0]} px"
    ok = sorted({layer.level for layer in layers if min(map_size_at(latent_hw, layer.level)) >= need})
    hint = f"levels that work at this size: {', '.join(map(str, ok))}" if ok else \
        "no cross-attention level of this model is large enough; use a larger image"
    raise ValueError(f"level: at {image} {method.name} reads maps of {h}×{w} at image ÷{level}, "
                     f"but needs at least {need}×{need}; {hint}")


def layers_at(layers: list[AttentionLayer], level: int, input_name: str = "level") -> list[AttentionLayer]:
    """The layers at one image divisor; raises naming the model's levels if it has none there."""
    chosen = [layer for layer in layers if layer.level == level]
    if not chosen:
        available = ", ".join(str(v) for v in sorted({layer.level for layer in layers}))
        raise ValueError(f"{input_name}: this model has no cross-attention at image ÷{level}; its levels are {available}")
    return chosen


def layer_levels(layers: list[AttentionLayer]) -> list[int]:
    """The distinct levels of ``layers``, finest first."""
    return sorted({layer.level for layer in layers})


def level_map(layers: list[AttentionLayer]) -> dict[tuple[str, int, int], int]:
    """``{replace key: level}`` of ``layers`` (what a method's per-run state is given)."""
    return {layer.key: layer.level for layer in layers}



# -- finding the layers ----------------------------------------------------------------------------------------------
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


def unet_layers(dm: UNetModel) -> list[AttentionLayer]:
    """Every attn2 layer of a ``UNetModel`` in forward order (input blocks, middle, output blocks), its level counted
    from the Downsample / Upsample modules passed on the way."""
    layers: list[AttentionLayer] = []

    def walk(name: str, blocks, ds: int) -> int:
        for number, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    layers.extend(AttentionLayer((name, number, depth), VAE_FACTOR * ds)
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


def dit_of(model_patcher, input_name: str = "model"):
    """The diffusion network of a supported DiT (Flux, SD3/SD3.5's MMDiT); raises naming the model for anything
    else (PixArt, AuraFlow, HiDream… whose attention ComfyUI does not route the same way)."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if type(dm) is Flux:
        return dm
    if type(dm) is OpenAISignatureMMDITWrapper:
        if getattr(dm, "register_length", 0):
            raise ValueError(f"{input_name}: this MMDiT puts {dm.register_length} register tokens before the text; "
                             f"Attention Align supports {SUPPORTED}")
        return dm
    kind = type(dm).__name__ if dm is not None else type(model_patcher).__name__
    raise ValueError(f"{input_name}: this model's diffusion network is {kind}, which Attention Align does not support "
                     f"(its attention is not reachable through ComfyUI's block replaces); supported: {SUPPORTED}")


def joint_layers(dm) -> list[AttentionLayer]:
    """Every joint-attention block in forward order, each at image ÷ (8 × patch size)."""
    level = VAE_FACTOR * int(dm.patch_size)
    if isinstance(dm, Flux):
        keys = [("double", i, 0) for i in range(len(dm.double_blocks))] + \
               [("single", i, 0) for i in range(len(dm.single_blocks))]
    else:
        keys = [("double", i, 0) for i in range(len(dm.joint_blocks))]
    return [AttentionLayer(key, level) for key in keys]



# -- the routers' parts ----------------------------------------------------------------------------------------------
def host_attention(q, k, v, heads, **kwargs):
    """ComfyUI's optimized attention as the stock CrossAttention calls it, looked up at call time."""
    return comfy_attention.optimized_attention(q, k, v, heads, **kwargs)


def _describe(replace) -> str:
    """Where another pack's replace comes from: its function's or its class's module and name."""
    named = replace if hasattr(replace, "__qualname__") else type(replace)
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"


def _router_over(attention_fn, foreign, carried=None) -> CrossAttentionReplace:
    """A router that takes ``foreign`` (another pack's replace, or None) over, keeping the terms ``carried`` (a router)
    already holds. A replace that speaks IPAdapter Plus's protocol (its ``Attn2Replace``: plain attention plus
    ``callback``/``kwargs`` lists of terms) is taken over term by term, so the pack's own attention (edited, if a
    method edits it) is what the terms are added to; any other replace is wrapped whole: it computes the output and
    the pack only observes."""
    callbacks, kwargs = getattr(foreign, "callback", None), getattr(foreign, "kwargs", None)
    ipadapter = isinstance(callbacks, list) and isinstance(kwargs, list) and len(callbacks) == len(kwargs) \
        and callable(getattr(foreign, "add", None))
    router = CrossAttentionReplace(attention_fn, inner=None if ipadapter else foreign)
    if ipadapter:
        router.added, router.absorbed = tuple(zip(callbacks, (dict(k) for k in kwargs))), (foreign,)
    if carried is not None:
        router.added, router.absorbed = router.added + carried.added, router.absorbed + carried.absorbed
    return router
