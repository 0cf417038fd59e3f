"""DiT models (Flux, SD3/SD3.5): their joint-attention blocks, and how the pack reads them without monkeypatching.

Two documented patch points of ComfyUI 0.3.64, both set on a model clone:

* ``patches_replace["dit"][("double_block", i)]`` / ``("single_block", i)``: a *block* replace
  (:class:`JointBlockRouter`), called as ``replace(args, {"original_block": fn})``. When the run's observers want
  that block, or an editor changes its attention (Joint Attention Temperature, Attention Regulation, Attention
  Modulation), it hands the block a copy of
  ``transformer_options`` carrying a :class:`~..guidance.joint_attention.JointAttentionTap` as
  ``optimized_attention_override`` (chained to any override already there), then runs the original block (or
  another pack's replace it took over). The override sees the block's q and k exactly as the kernel does; the
  kernel still computes the output (twice, for the temperature; for the text rows only, with Regulation or
  Modulation, whose image rows are computed explicitly), so capture changes nothing.
* an ``APPLY_MODEL`` wrapper (:class:`JointGeometry`) that writes, per model call, where the text and image tokens
  sit (text tokens = the conditioning's length; image grid = latent ÷ patch size) into a copy of the call's
  ``transformer_options``: a single block only sees the concatenated sequence.

Layer keys are ``("double", i, 0)`` and ``("single", i, 0)`` (SD3's joint blocks are "double"); every block's maps
are at image ÷ 16 (VAE ÷ 8 × patch 2).
"""
from __future__ import annotations

import math

from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.patcher_extension import WrappersMP

from ..guidance.attention_patch import LayerCall, fold_repeats, pass_fields, run_parts
from ..guidance.joint_attention import JointAttentionTap, JointLayout
from ._unet import VAE_FACTOR, CrossAttentionLayer, cross_attention_layers

#: ``transformer_options`` key of the per-call token layout (set by :class:`JointGeometry`)
GEOMETRY_KEY = "attention_align_joint"
#: the ComfyUI block-replace names of each layer-key block name
REPLACE_NAME = {"double": "double_block", "single": "single_block"}
SUPPORTED = "SD1.x, SD2.x and SDXL (UNet), Flux (dev, schnell, Kontext) and SD3/SD3.5 (MMDiT)"


def dit_of(model_patcher, input_name: str = "model"):
    """The diffusion network of a supported DiT (Flux, SD3/SD3.5's MMDiT), or None for a UNet; raises naming the
    model for anything else (PixArt, AuraFlow, HiDream… whose attention ComfyUI does not route the same way)."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if isinstance(dm, UNetModel):
        return None
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


def is_joint_key(key) -> bool:
    return key[0] in REPLACE_NAME


def blocks_chosen(layers: list[CrossAttentionLayer], dit_blocks: str) -> list[CrossAttentionLayer]:
    """``layers`` as a method's ``dit_blocks`` input picks them: all, or (``double``) a DiT's double-stream blocks
    only — Flux's 19; all of SD3's. A UNet's layers are not DiT blocks and are returned as they are."""
    if dit_blocks == "double" and layers and is_joint_key(layers[0].key):
        return [layer for layer in layers if layer.key[0] == "double"]
    return layers


def joint_layers(dm) -> list[CrossAttentionLayer]:
    """Every joint-attention block in forward order, each at image ÷ (8 × patch size)."""
    level = VAE_FACTOR * int(dm.patch_size)
    if isinstance(dm, Flux):
        keys = [("double", i, 0) for i in range(len(dm.double_blocks))] + \
               [("single", i, 0) for i in range(len(dm.single_blocks))]
    else:
        keys = [("double", i, 0) for i in range(len(dm.joint_blocks))]
    return [CrossAttentionLayer(key, level) for key in keys]


class JointGeometry:
    """The ``APPLY_MODEL`` wrapper: adds this call's :class:`JointLayout` and latent size to a copy of its
    ``transformer_options`` (args as ``BaseModel.apply_model`` passes them)."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        options = dict(transformer_options or {})
        if c_crossattn is not None:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            p = self.patch_size
            options[GEOMETRY_KEY] = (JointLayout(int(c_crossattn.shape[1]), (-(-h // p), -(-w // p))), (h, w))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def joint_call(block: tuple[str, int], options: dict) -> tuple[LayerCall, JointLayout]:
    """The :class:`LayerCall` of one block call (what observers decide on), and its token layout."""
    geometry = options.get(GEOMETRY_KEY)
    if geometry is None:
        raise RuntimeError(f"DiT block {block}: the call carries no token layout; the model's APPLY_MODEL wrapper "
                           "from Attention Align did not run")
    layout, latent = geometry
    call = LayerCall(block=block, depth=0, size=layout.grid, latent_size=latent, **pass_fields(options))
    return call, layout


class JointBlockRouter:
    """The block replace on one DiT block (see the module docstring). ``inner``: another pack's replace that held
    the block before, which still runs it."""

    is_attention_align_replace = True

    def __init__(self, block: tuple[str, int], inner=None):
        self.block, self.inner = block, inner

    def __eq__(self, other) -> bool:
        return isinstance(other, JointBlockRouter) and (self.block, self.inner) == (other.block, other.inner)

    __hash__ = None

    def to(self, device) -> JointBlockRouter:
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        observers, editors = run_parts(options)
        if observers or editors:
            call, layout = joint_call(self.block, options)
            active = [o for o in observers if o.wants(call)]
            wanting = [e for e in editors if (e.wants_joint(call) if hasattr(e, "wants_joint") else e.wants(call))]
            scale = math.prod(e.text_scale(call) for e in wanting if hasattr(e, "text_scale"))
            explicit = [e for e in wanting if not hasattr(e, "text_scale")]     # Regulation, Modulation
            if active or scale != 1.0 or explicit:
                def observe(probs):
                    probs = fold_repeats(probs, call)
                    for observer in active:
                        observer.observe(probs, call)
                options = dict(options)
                options["optimized_attention_override"] = JointAttentionTap(
                    layout, observe if active else None, previous=options.get("optimized_attention_override"),
                    text_scale=scale, editors=explicit, call=call)
                args = {**args, "transformer_options": options}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


def _replace_key(key) -> tuple[str, int]:
    return (REPLACE_NAME[key[0]], key[1])


def reclaim_joint_blocks(model_options: dict, layers) -> None:
    """Make sure each block of ``layers`` is routed through the pack in these options (a clone's, or one run's
    copy): a block without a router gets one, taking over a replace another pack put there."""
    replaces = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    dit = dict(replaces.get("dit", {}))
    changed = False
    for key in layers:
        rk = _replace_key(key)
        current = dit.get(rk)
        if not getattr(current, "is_attention_align_replace", False):
            dit[rk], changed = JointBlockRouter((key[0], key[1]), inner=current), True
    if changed:
        replaces["dit"] = dit


def add_joint_geometry(model_clone) -> None:
    """The :class:`JointGeometry` wrapper on ``model_clone`` (once per clone)."""
    dm = dit_of(model_clone)
    if GEOMETRY_KEY not in model_clone.wrappers.get(WrappersMP.APPLY_MODEL, {}):
        model_clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, GEOMETRY_KEY, JointGeometry(dm.patch_size))


def attention_layers(model_patcher, input_name: str = "model") -> list[CrossAttentionLayer]:
    """The layers whose image→text attention the pack can read: a UNet's attn2 layers, a DiT's joint blocks."""
    dm = dit_of(model_patcher, input_name)
    return cross_attention_layers(model_patcher, input_name) if dm is None else joint_layers(dm)
