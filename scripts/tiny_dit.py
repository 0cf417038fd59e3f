"""Random-weight DiT models (Flux, SD3/SD3.5's MMDiT) and a small T5 text encoder, built from ComfyUI's own classes.

No weights can be downloaded for tests or benchmarks, and full-size T5-XXL (4.7 B parameters) cannot be built on a
laptop, so this builds:

* ``flux_model(arch)``: ComfyUI's ``supported_models.Flux`` → ``model_base.Flux`` → ``ModelPatcher``; ``tiny`` (2
  double + 2 single blocks, width 64) or ``flux_dev`` (Flux-dev's real architecture: 19 + 38 blocks, width 3072);
* ``mmdit_model(arch)``: ``supported_models.SD3`` → ``model_base.SD3``; ``tiny`` (3 joint blocks, width 192, an
  image-only self-attention in block 0 as SD3.5-medium has) or ``sd35_medium`` (24 blocks, blocks 0–12 with it);
* ``flux_clip()`` / ``sd3_clip()``: ComfyUI's ``FluxClipModel`` / ``SD3ClipModel`` with the real tokenizers and
  small encoders (ComfyUI's ``<name>_model_config`` model options shrink each one): T5 with 2 layers, CLIP-L/G with
  3 (SD3 reads CLIP's penultimate layer). Flux's T5 is 64 wide (the tiny Flux reads a 64-wide context); SD3's must be 4096 wide, because SD3
  concatenates the CLIP-L/G tokens, padded to 4096 channels, with T5's.

The diffusion models' weights end up as ComfyUI's loaders leave them (inference tensors, no grad), so the pack's
gradient passes meet what they meet on a real checkpoint. Initialisation: every matrix normal(0, gain/√fan_in) (signal-preserving; the q/k/v projections get ``QK_GAIN`` so
attention maps are peaked and depend on the input), norms' scales 1, every other vector 0, and MMDiT's positional
table its fixed sin-cos values. ComfyUI must be importable.
"""
from __future__ import annotations

import math

QK_GAIN = 1.5

FLUX = {
    "tiny": dict(in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=64, hidden_size=64, mlp_ratio=2.0,
                 num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=True),
    "flux_dev": dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                     mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                     theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
}

MMDIT = {
    "tiny": dict(in_channels=16, out_channels=16, patch_size=2, depth=3, adm_in_channels=128,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": 192}},
                 pos_embed_max_size=32, num_patches=1024, qk_norm="rms", x_block_self_attn_layers=[0]),
    "sd35_medium": dict(in_channels=16, out_channels=16, patch_size=2, depth=24, adm_in_channels=2048,
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": 4096, "out_features": 1536}},
                        pos_embed_max_size=384, num_patches=147456, qk_norm="rms",
                        x_block_self_attn_layers=list(range(13))),
}

#: small text encoders; vocabularies stay full size (the real tokenizers' ids index them)
T5_SMALL = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2)
T5_SD3 = dict(d_model=4096, d_ff=64, d_kv=16, num_heads=4, num_layers=2)
CLIP_L_SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3)
CLIP_G_SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3)


def init_random_(module, *, seed: int = 0) -> None:
    """The initialisation of the module docstring, in place."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in module.named_modules():
            norm = "Norm" in type(mod).__name__
            for pname, p in mod.named_parameters(recurse=False):
                if p.ndim >= 2:
                    gain = QK_GAIN if name.rsplit(".", 1)[-1] in ("qkv", "q", "k", "q_proj", "k_proj") else 1.0
                    p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(p[0].numel())))
                elif norm and pname in ("weight", "scale"):
                    p.fill_(1.0)
                else:
                    p.zero_()


def _patcher(model):
    """A ``ModelPatcher`` of ``model`` with its weights as ComfyUI's loaders leave them: inference tensors, no grad."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    with torch.inference_mode():
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, t in list(table.items()):
                    if t is not None:
                        table[name] = torch.nn.Parameter(t.clone(), requires_grad=False) \
                            if isinstance(t, torch.nn.Parameter) else t.clone()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def flux_model(arch: str = "tiny", *, seed: int = 0, dtype=None, device="cpu"):
    """A ``ModelPatcher`` of a random-weight Flux (guidance-distilled, as Flux-dev) of ``arch``."""
    import comfy.supported_models

    config = comfy.supported_models.Flux(dict(FLUX[arch], image_model="flux"))
    if dtype is not None:
        config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    init_random_(model.diffusion_model, seed=seed)
    return _patcher(model)


def mmdit_model(arch: str = "tiny", *, seed: int = 0, dtype=None, device="cpu"):
    """A ``ModelPatcher`` of a random-weight SD3-family MMDiT of ``arch``."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SD3(dict(MMDIT[arch], pos_embed_scaling_factor=None))
    if dtype is not None:
        config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    dm = model.diffusion_model
    init_random_(dm, seed=seed)
    side = int(math.isqrt(MMDIT[arch]["num_patches"]))
    table = mmdit.get_2d_sincos_pos_embed(dm.hidden_size, side)
    with torch.no_grad():
        dm.pos_embed.copy_(torch.from_numpy(table).float()[None])
    return _patcher(model)


def _clip(target_tokenizer, target_model, model_options: dict, *, seed: int):
    import comfy.sd
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(target_tokenizer, target_model)
    clip = comfy.sd.CLIP(target, model_options=model_options)
    init_random_(clip.cond_stage_model, seed=seed)
    return clip


def flux_clip(*, seed: int = 1, full_width: bool = False):
    """Flux's text encoders (CLIP-L for the pooled vector, T5 for the context) with small configs: a ``CLIP``.
    ``full_width``: what Flux-dev's architecture reads (CLIP-L at its real size for the 768-wide pooled vector,
    a 2-layer T5 at T5-XXL's 4096 width)."""
    import comfy.text_encoders.flux

    options = {"t5xxl_model_config": T5_SD3} if full_width else \
        {"clip_l_model_config": CLIP_L_SMALL, "t5xxl_model_config": T5_SMALL}
    return _clip(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip(), options, seed=seed)


def sd3_clip(*, seed: int = 1, full_width: bool = False):
    """SD3's text encoders (CLIP-L, CLIP-G, T5) with small configs: a ``CLIP`` whose context is 77 CLIP tokens
    (L and G side by side, padded to 4096 channels) followed by T5's. ``full_width``: CLIP-L and CLIP-G at their
    real size (SD3.5's 2048-wide pooled vector) and the 2-layer T5."""
    import comfy.text_encoders.sd3_clip

    options = {"t5xxl_model_config": T5_SD3} if full_width else \
        {"clip_l_model_config": CLIP_L_SMALL, "clip_g_model_config": CLIP_G_SMALL, "t5xxl_model_config": T5_SD3}
    return _clip(comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip(), options,
                 seed=seed)


def tiny_vae(*, seed: int = 2):
    """A small random-weight ``AutoencoderKL`` with Flux's / SD3's 16 latent channels (÷8), as a ComfyUI ``VAE``."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = dict(embed_dim=16, ddconfig=dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3,
                                              ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1, attn_resolutions=[],
                                              dropout=0.0))
    model = AutoencoderKL(**params)
    init_random_(model, seed=seed)
    vae = comfy.sd.VAE(sd=model.state_dict(), config={"params": params})
    vae.latent_channels = 16
    return vae


# -- example workflows on tiny DiTs -------------------------------------------------------------------------------
#: the node type tests and scripts register (never shipped in the pack) in place of a DiT workflow's loaders
TINY_LOADER = "DevTinyDiTLoader"
#: loader class → {its output slot: the tiny loader's slot (0 MODEL, 1 CLIP, 2 VAE)}
LOADER_SLOTS = {"UNETLoader": {0: 0}, "DualCLIPLoader": {0: 1}, "TripleCLIPLoader": {0: 1}, "VAELoader": {0: 2},
                "CheckpointLoaderSimple": {0: 0, 1: 1, 2: 2}}
_CACHE: dict = {}


def tiny_family(family: str):
    """(MODEL, CLIP, VAE) of a tiny ``flux`` or ``sd35`` model, built once per process."""
    if family not in _CACHE:
        if family == "flux":
            _CACHE[family] = (flux_model(), flux_clip(), tiny_vae())
        elif family == "sd35":
            _CACHE[family] = (mmdit_model(), sd3_clip(), tiny_vae())
        else:
            raise ValueError(f"family: '{family}' is not a DiT family; choose flux or sd35")
    return _CACHE[family]


class TinyDiTLoader:
    """A development-only ComfyUI node (registered by tests and scripts): a tiny DiT family's MODEL, CLIP and VAE."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "development"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["flux", "sd35"],)}}

    def load(self, family: str):
        return tiny_family(family)


def register(host) -> None:
    """Make :class:`TinyDiTLoader` available to ``host`` (an in-process ComfyUI)."""
    host.nodes.NODE_CLASS_MAPPINGS[TINY_LOADER] = TinyDiTLoader


#: a custom-node package that registers the loader in a ComfyUI server process (``frontend.ComfyServer``)
SERVER_PACKAGE = """import sys
sys.path.insert(0, {scripts!r})
import tiny_dit
NODE_CLASS_MAPPINGS = {{tiny_dit.TINY_LOADER: tiny_dit.TinyDiTLoader}}
"""


def on_tiny_dit(prompt: dict, family: str, *, size: int = 96, steps: int | None = 3) -> dict:
    """A copy of an API prompt of a DiT workflow whose loaders are replaced by the tiny ``family`` (one
    :data:`TINY_LOADER` node), every SD3 empty latent ``size`` px and every KSampler ``steps`` steps."""
    import copy

    out = copy.deepcopy(prompt)
    loaders = [nid for nid, node in out.items() if node["class_type"] in LOADER_SLOTS]
    if not loaders:
        raise ValueError("prompt: no DiT loader (UNETLoader, DualCLIPLoader, TripleCLIPLoader, VAELoader, "
                         "CheckpointLoaderSimple) to replace")
    slots = {nid: LOADER_SLOTS[out[nid]["class_type"]] for nid in loaders}
    tiny = loaders[0]
    for nid in loaders[1:]:
        del out[nid]
    out[tiny] = {"class_type": TINY_LOADER, "inputs": {"family": family}}
    for node in out.values():
        inputs = node["inputs"]
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and value[0] in slots:
                inputs[name] = [tiny, slots[value[0]][value[1]]]
        if node["class_type"] == "EmptySD3LatentImage":
            inputs["width"] = inputs["height"] = size
        if steps is not None and node["class_type"] == "KSampler":
            inputs["steps"] = steps
    return out
