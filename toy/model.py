"""The toy text-to-image model: its configuration, and how it is built from ComfyUI's own classes.

Host-side module: it builds ComfyUI objects, so every ComfyUI import happens inside the functions (importing this
module needs neither ComfyUI nor torch; :data:`TOY_CONFIG` is plain data). ComfyUI must be importable when a
builder runs (``comfy.cli_args.args.cpu`` set first on a CPU-only torch, as ``toy.train`` and the host do).

Architecture (128 × 128 px images, latent 4 × 16 × 16 in SD1.5's latent format)
    * UNet: ComfyUI's ``UNetModel`` (SD1.5 family, eps prediction, 1000-step scaled-linear betas), 64 channels at
      latent ÷1 (16 × 16) and 128 at ÷2 (8 × 8), one res block and one cross-attention transformer per level and in
      the middle: 7 attn2 layers, 3 at image ÷8 (16 × 16 maps) and 4 at image ÷16 (8 × 8 maps, the level to read:
      ``level = 16`` in the pack's nodes). Context width 128, heads of 32 channels.
    * Text encoder: ComfyUI's ``SD1ClipModel`` (clip_l, ``CLIPTextModel``) with the real CLIP tokenizer
      (``SD1Tokenizer``, 49408 tokens, 77 positions), shrunk through ComfyUI's own ``clip_l_model_config`` option:
      width 128, 4 layers, 4 heads, MLP 512. Trained jointly with the UNet.
    * VAE: ComfyUI's ``AutoencoderKL`` (through ``comfy.sd.VAE(config=…)``), ÷8, 4 latent channels, 32/64 channels.
      After training its 1 × 1 quant convolutions are rescaled (an exact reparametrisation) so the latent has zero
      mean and standard deviation 1 / 0.18215 per channel, i.e. SD1.5's latent format applies unchanged.

File format (safetensors, float16): ``model.diffusion_model.*`` (UNet), ``cond_stage_model.transformer.*`` (text
encoder, ``text_model.*`` inside), ``first_stage_model.*`` (VAE); one metadata entry, key ``FORMAT``, whose value is
JSON: ``format_version``, ``config`` (the configuration it was trained with) and how it was made (one key because
safetensors writes several metadata keys in a random order, and the file's bytes must be reproducible). ComfyUI's checkpoint detector does not recognise it (SD15 detection
needs 320 model channels and the full CLIP-L; the full CLIP-L alone is 123 M parameters); :func:`load_toy_model`
builds MODEL / CLIP / VAE from it through ComfyUI's model classes (``supported_models.SD15``, ``BaseModel``,
``ModelPatcher``, ``comfy.sd.CLIP``, ``comfy.sd.VAE``).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

FORMAT = "attention-align-toy"
FORMAT_VERSION = "1"
IMAGE_SIZE = 128
VAE_FACTOR = 8
LATENT_CHANNELS = 4
SD15_SCALE = 0.18215

PREFIX_UNET = "model.diffusion_model."
PREFIX_TEXT = "cond_stage_model.transformer."
PREFIX_VAE = "first_stage_model."

TOY_CONFIG: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "unet": dict(image_size=IMAGE_SIZE // VAE_FACTOR, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                 model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1], context_dim=128,
                 num_heads=-1, num_head_channels=32, use_linear_in_transformer=True, use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, use_temporal_resblock=False, use_temporal_attention=False,
                 use_checkpoint=False),
    # keys of comfy/sd1_clip_config.json that differ (ComfyUI's ``clip_l_model_config`` model option)
    "text": dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
                 projection_dim=128),
    "vae": dict(embed_dim=LATENT_CHANNELS,
                ddconfig=dict(double_z=True, z_channels=LATENT_CHANNELS, resolution=IMAGE_SIZE, in_channels=3,
                              out_ch=3, ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1, attn_resolutions=[],
                              dropout=0.0)),
}


def toy_config() -> dict[str, Any]:
    """A deep copy of :data:`TOY_CONFIG` (builders may be given a modified one)."""
    return copy.deepcopy(TOY_CONFIG)


# ------------------------------------------------------------------------------------------------ initialisation
def init_weights_(module, *, seed: int | None = None) -> None:
    """PyTorch's default initialisation for every layer (ComfyUI's ``disable_weight_init`` ops skip it), norms at
    1/0, embeddings normal(0, 0.02), and the zero initialisation of diffusion UNets: the last convolution of every
    res block, every transformer's ``proj_out`` and the UNet's output convolution start at zero."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Conv3d)):
                _reset(mod)
            elif isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if mod.weight is not None:
                    mod.weight.fill_(1.0)
                    mod.bias.zero_()
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.normal_(0.0, 0.02)
        for name, mod in module.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            zero = (name.endswith("out_layers.3") or leaf == "proj_out" or name == "out.2")
            if zero and isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()


def _reset(mod) -> None:
    """torch's own reset of a Linear / ConvNd (the ComfyUI subclasses override ``reset_parameters`` to do nothing)."""
    import torch

    for base in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d):
        if isinstance(mod, base):
            base.reset_parameters(mod)
            return


# ------------------------------------------------------------------------------------------------------ builders
def build_unet(config: dict | None = None, *, dtype=None, device="cpu"):
    """ComfyUI's ``UNetModel`` of the toy configuration, plain torch layers (trainable), uninitialised weights."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = (config or TOY_CONFIG)["unet"]
    return UNetModel(**cfg, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)


def build_text_encoder(config: dict | None = None, *, dtype=None, device="cpu"):
    """ComfyUI's ``SD1ClipModel`` (clip_l) shrunk to the toy text configuration, the same class and options the
    loader uses; its parameters are unfrozen (ComfyUI freezes text encoders)."""
    import comfy.ops
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SD1ClipModel(device=device, dtype=dtype, model_options=text_model_options(config, trainable=True))
    for p in clip.parameters():
        p.requires_grad_(True)
    return clip


def make_text_encoder_differentiable_(clip) -> None:
    """Training shim: ComfyUI's ``CLIPLayer.forward`` adds its residuals in place (``x += …``), which autograd
    refuses when the text encoder is trained. Each layer of ``clip`` gets the same computation out of place (an
    instance attribute; the class, its weights and every other instance are untouched)."""
    import types

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))

    for layer in clip.clip_l.transformer.text_model.encoder.layers:
        layer.forward = types.MethodType(forward, layer)


def text_model_options(config: dict | None = None, *, trainable: bool = False) -> dict:
    """ComfyUI model options that make ``SD1ClipModel`` build the toy text encoder."""
    opts: dict[str, Any] = {"clip_l_model_config": dict((config or TOY_CONFIG)["text"])}
    if trainable:
        import comfy.ops

        opts["custom_operations"] = comfy.ops.disable_weight_init
    return opts


def build_vae_model(config: dict | None = None):
    """ComfyUI's ``AutoencoderKL`` of the toy configuration (uninitialised weights)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return AutoencoderKL(**copy.deepcopy((config or TOY_CONFIG)["vae"]))


def tokenizer():
    """ComfyUI's real CLIP tokenizer (``SD1Tokenizer``; the bundled CLIP-L vocabulary)."""
    import comfy.sd1_clip

    return comfy.sd1_clip.SD1Tokenizer()


def token_ids(tok, caption: str) -> list[int]:
    """The 77 token ids ComfyUI's CLIPTextEncode feeds the text encoder for ``caption`` (bos, words, eos, padding).
    Raises ValueError if the caption needs more than one 77-token window."""
    chunks = tok.tokenize_with_weights(caption)["l"]
    if len(chunks) != 1:
        raise ValueError(f"caption {caption!r} needs {len(chunks)} 77-token windows; at most 75 tokens are allowed")
    return [int(t) for t, _w in chunks[0]]


def alphas_cumprod():
    """ᾱ_t, t = 0..999, exactly as ComfyUI's SD1.5 model sampling computes them (``ModelSamplingDiscrete`` with
    the SD15 config's default scaled-linear betas); float32 ``[1000]``."""
    import comfy.model_sampling
    import comfy.supported_models

    cfg = comfy.supported_models.SD15(dict(TOY_CONFIG["unet"]))
    ms = comfy.model_sampling.ModelSamplingDiscrete(cfg)
    sigmas = ms.sigmas.float()
    return 1.0 / (1.0 + sigmas ** 2)


def normalise_vae_latent_(vae_model, mean, std, *, target_std: float = 1.0 / SD15_SCALE) -> None:
    """Rescale the VAE's 1 × 1 quant convolutions in place so its latent becomes ``(z − mean) · k`` with
    ``k = target_std / std`` per channel (``mean``, ``std``: ``[C]`` of the current latent means); the decoder is
    adjusted so ``decode(encode(x))`` is unchanged. Exact up to float rounding."""
    import torch

    k = (target_std / std).to(torch.float64)
    m = mean.to(torch.float64)
    c = k.numel()
    with torch.no_grad():
        q, pq = vae_model.quant_conv, vae_model.post_quant_conv
        w, b = q.weight.double(), q.bias.double()
        w[:c] *= k[:, None, None, None]
        b[:c] = (b[:c] - m) * k
        b[c:] += 2.0 * torch.log(k)
        q.weight.copy_(w)
        q.bias.copy_(b)
        w2, b2 = pq.weight.double(), pq.bias.double()
        b2 = b2 + (w2[:, :, 0, 0] * m[None, :]).sum(1)
        w2 = w2 / k[None, :, None, None]
        pq.weight.copy_(w2)
        pq.bias.copy_(b2)


# ---------------------------------------------------------------------------------------------------- file format
def state_dict_for_file(unet, text_encoder, vae_model, *, dtype=None) -> dict:
    """One checkpoint-layout state dict (see the module docstring), tensors contiguous and cast to ``dtype``."""
    import torch

    dtype = dtype or torch.float16
    sd = {PREFIX_UNET + k: v for k, v in unet.state_dict().items()}
    sd.update({PREFIX_TEXT + k: v for k, v in text_encoder.clip_l.transformer.state_dict().items()})
    sd.update({PREFIX_VAE + k: v for k, v in vae_model.state_dict().items()})
    return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in sd.items()}


def save_toy_model(path: str | Path, unet, text_encoder, vae_model, *, config: dict | None = None,
                   extra_metadata: dict[str, Any] | None = None) -> dict:
    """Write the toy model file; returns its state dict."""
    import safetensors.torch

    sd = state_dict_for_file(unet, text_encoder, vae_model)
    info = {"format_version": FORMAT_VERSION, "config": config or TOY_CONFIG, **(extra_metadata or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path), metadata={FORMAT: json.dumps(info, sort_keys=True)})
    return sd


class NotAToyModel(ValueError):
    """The file is not a toy model this code can load."""


def read_toy_file(path: str | Path, *, input_name: str = "ckpt_name") -> tuple[dict, dict]:
    """``(config, state_dict)`` of a toy model file. Raises :class:`NotAToyModel` naming the input, the file and
    what was expected when the file is not a safetensors toy model (no or another ``format`` metadata, a missing or
    unreadable config, or tensors not under the three prefixes)."""
    import safetensors
    import safetensors.torch

    path = Path(path)
    expected = (f"a safetensors file written by toy/train.py, with a metadata entry '{FORMAT}' and tensors under "
                f"{PREFIX_UNET}, {PREFIX_TEXT}, {PREFIX_VAE}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the same user error)
        raise NotAToyModel(f"{input_name}: {path} is not a toy model: cannot read it as safetensors ({exc}); "
                           f"expected {expected}") from exc
    if FORMAT not in meta:
        sample = ", ".join(sorted(keys)[:3]) + (", …" if len(keys) > 3 else "")
        raise NotAToyModel(f"{input_name}: {path} is not a toy model: its metadata keys are {sorted(meta)} "
                           f"(tensors: {sample or 'none'}); expected {expected}. A regular SD checkpoint loads with "
                           "Load Checkpoint instead.")
    try:
        info = json.loads(meta[FORMAT])
        version, config = info.get("format_version"), info["config"]
        assert all(k in config for k in ("image_size", "unet", "text", "vae"))
    except Exception as exc:  # noqa: BLE001
        raise NotAToyModel(f"{input_name}: {path}: its '{FORMAT}' metadata is not JSON with a config of "
                           f"image_size, unet, text and vae; expected {expected}") from exc
    if version != FORMAT_VERSION:
        raise NotAToyModel(f"{input_name}: {path} is toy format version {version!r}; this code reads version "
                           f"{FORMAT_VERSION!r}")
    stray = [k for k in keys if not k.startswith((PREFIX_UNET, PREFIX_TEXT, PREFIX_VAE))]
    if stray:
        raise NotAToyModel(f"{input_name}: {path} has tensors outside the toy layout: {stray[:5]}; expected {expected}")
    return config, safetensors.torch.load_file(str(path))


#: the toy model the pack ships (Load Toy Model's ``attention-align/toy_shapes.safetensors``)
SHIPPED_FILE = Path(__file__).resolve().parent / "weights" / "toy_shapes.safetensors"


def world_of(path: str | Path, *, input_name: str = "ckpt") -> str:
    """The name of the world a toy model file was trained in (a key of ``toy.scenes.WORLDS``): ``"v2"`` for a file
    written by ``toy.train_v2`` (its metadata names the trainer), else ``"v1"``. The world decides the scenes and
    the held-out prompts the model is evaluated on. Raises :class:`NotAToyModel` for a file that is not a toy model."""
    import safetensors

    read_toy_file(path, input_name=input_name)
    with safetensors.safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()[FORMAT])
    return "v2" if info.get("trainer") == "toy.train_v2" else "v1"


def _strict_load(module, sd: dict, *, part: str, path: Path, input_name: str) -> None:
    """Load ``sd`` into ``module``; a missing, unexpected or mis-shaped tensor is a NotAToyModel naming them."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise NotAToyModel(f"{input_name}: {path}: the {part} tensors do not match the file's config: missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]}, wrong shape {shapes[:4]}")
    module.load_state_dict(sd, strict=True)


def load_toy_model(path: str | Path, *, input_name: str = "ckpt_name", embedding_directory=None):
    """``(MODEL, CLIP, VAE)`` of a toy model file, built through ComfyUI's classes as its checkpoint loader builds
    them: ``supported_models.SD15`` (with the toy UNet config) → ``BaseModel`` (eps) → ``ModelPatcher``;
    ``comfy.sd.CLIP`` of ``SD1Tokenizer`` + ``SD1ClipModel``; ``comfy.sd.VAE`` of ``AutoencoderKL``.
    Raises :class:`NotAToyModel` for a file that is not a toy model."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.utils
    import torch

    path = Path(path)
    config, sd = read_toy_file(path, input_name=input_name)
    unet_sd = {k[len(PREFIX_UNET):]: v for k, v in sd.items() if k.startswith(PREFIX_UNET)}
    text_sd = {k[len(PREFIX_TEXT):]: v for k, v in sd.items() if k.startswith(PREFIX_TEXT)}
    vae_sd = {k[len(PREFIX_VAE):]: v for k, v in sd.items() if k.startswith(PREFIX_VAE)}

    # MODEL: the SD15 model config with the toy UNet (its fixed 8 heads replaced by the file's head layout)
    model_config = comfy.supported_models.SD15(dict(config["unet"]))
    model_config.unet_config = dict(config["unet"])
    load_device = mm.get_torch_device()
    params = sum(v.numel() for v in unet_sd.values())
    unet_dtype = mm.unet_dtype(model_params=params, supported_dtypes=list(model_config.supported_inference_dtypes),
                               weight_dtype=torch.float16)
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = model_config.get_model({}, "", device=mm.unet_inital_load_device(params, unet_dtype))
    _strict_load(model.diffusion_model, unet_sd, part="UNet", path=path, input_name=input_name)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                               offload_device=mm.unet_offload_device())

    # CLIP: ComfyUI's SD1 text encoder classes with the real tokenizer, shrunk by the clip_l_model_config option
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, parameters=sum(v.numel() for v in text_sd.values()),
                         model_options=text_model_options(config))
    _strict_load(clip.cond_stage_model.clip_l.transformer, text_sd, part="text encoder", path=path,
                 input_name=input_name)

    # VAE: ComfyUI's VAE wrapper around AutoencoderKL of the file's config
    own = build_vae_model(config).state_dict()
    bad = sorted(set(own) ^ set(vae_sd)) + [k for k in own if k in vae_sd and own[k].shape != vae_sd[k].shape]
    if bad:
        raise NotAToyModel(f"{input_name}: {path}: the VAE tensors do not match the file's config: {bad[:4]}")
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": copy.deepcopy(config["vae"])})
    return patcher, clip, vae


def parameter_counts(config: dict | None = None) -> dict[str, int]:
    """Parameters of each part of a freshly built toy model (ComfyUI must be importable)."""
    unet, text, vae = build_unet(config), build_text_encoder(config), build_vae_model(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"unet": count(unet), "text": count(text.clip_l.transformer), "vae": count(vae)}


def map_sides(config: dict | None = None) -> dict[int, int]:
    """``{image divisor: map side}`` of the UNet's cross-attention levels at the configured image size."""
    cfg = config or TOY_CONFIG
    side = cfg["image_size"] // VAE_FACTOR
    return {VAE_FACTOR * 2 ** i: math.ceil(side / 2 ** i) for i in range(len(cfg["unet"]["channel_mult"]))}
