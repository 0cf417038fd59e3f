"""Build a tiny random-weight checkpoint that ComfyUI's CheckpointLoaderSimple detects as SD1.5 (no download).

The model is built from ComfyUI's own classes (UNetModel, SDClipModel, TAESD) and saved as safetensors; nothing of
ComfyUI is copied. ComfyUI's SD15 detector only fixes ``model_channels 320``, ``context_dim 768`` and 8 heads, so the
UNet can be small; the CLIP-L text encoder cannot shrink (its config is fixed), so the file is ~330 MiB in fp16.

Initialisation matters for tests: ComfyUI's default init (normal 0.02) gives a UNet whose output barely depends on
its input and attention that is almost uniform, so tests on it could hardly fail. Here every weight matrix gets
``std = gain/√fan_in`` (signal-preserving), layers that real checkpoints zero-initialise are random too, and the
attention query/key projections get ``gain = QK_GAIN`` so text and cross-attention maps are peaked and depend on the
latent and the prompt.

Layouts detected as SD15:
  tiny  3 levels (latent ÷1, ÷2, ÷4), one res block and one transformer per level, middle transformer: 10 attn2
        layers; at 128 px the ÷4 level is 4×4 (the "image ÷ 32" level T-SAM and A&E use at 16×16 for 512 px).
  sd15  SD1.5's block numbering (attn2 at input 1,2,4,5,7,8, middle, output 3..11), every level at 320 channels.

Other families (small UNets, full-size text encoders; see FAMILIES): tiny_sd2 (SD20, CLIP-H), tiny_sdxl (SDXL,
CLIP-L + CLIP-G). Real architectures with random weights, for benchmarks: sd15_full, sdxl_full.

Usage: python scripts/tiny_checkpoint.py OUT.safetensors [--layout tiny|sd15|tiny_sd2|tiny_sdxl|…] [--fp32] [--seed N]
ComfyUI must be importable (run with the ComfyUI checkout on PYTHONPATH, or call :func:`build` from a process that
already imported it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

QK_GAIN = 1.5

#: the real architectures (as ComfyUI's model_detection lists them), for benchmarks with random weights
FULL = {
    "sd15_full": dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                      transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                      use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1,
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], adm_in_channels=None),
    "sdxl_full": dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
                      transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4], transformer_depth_middle=10,
                      use_linear_in_transformer=True, context_dim=2048, num_heads=-1, num_head_channels=64,
                      transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], adm_in_channels=2816,
                      num_classes="sequential"),
}

#: small UNets of the other families, detected by ComfyUI as SD2.x (SD20) and SDXL; their text encoders are full
#: size (ComfyUI's CLIP configs are fixed): CLIP-H for SD2.x, CLIP-L + CLIP-G for SDXL
FAMILIES = {
    "tiny_sd2": dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 1, 1],
                     num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1], transformer_depth_middle=1,
                     transformer_depth_output=[1, 1, 1, 1, 1, 1], use_linear_in_transformer=True,
                     context_dim=1024, num_heads=-1, num_head_channels=64, adm_in_channels=None),
    # SDXL's detector fixes the per-block transformer depths [0, 0, 2, 2, 10, 10], not the widths
    "tiny_sdxl": dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 1, 1],
                      num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=1,
                      transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_linear_in_transformer=True,
                      context_dim=2048, num_heads=-1, num_head_channels=64, adm_in_channels=2816,
                      num_classes="sequential"),
}

#: the model class ComfyUI must detect for each architecture
DETECTED = {"sdxl_full": "SDXL", "tiny_sdxl": "SDXL", "tiny_sd2": "SD20"}

LAYOUTS = {
    "tiny": dict(channel_mult=[1, 1, 1], num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1]),
    "sd15": dict(channel_mult=[1, 1, 1, 1], num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]),
}


def _init_(module, qk_names=("to_q", "to_k", "q_proj", "k_proj"), embed_std=None) -> None:
    """Signal-preserving random init of every tensor (ComfyUI ops skip ``reset_parameters``)."""
    import torch

    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            leaf_module = mod_name.rsplit(".", 1)[-1]
            for pname, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norms):
                    p.fill_(1.0) if pname == "weight" else p.zero_()
                elif p.ndim >= 2 and "embedding" in leaf_module and embed_std is not None:
                    p.normal_(0.0, embed_std)
                elif p.ndim >= 2:
                    gain = QK_GAIN if leaf_module in qk_names else 1.0
                    p.normal_(0.0, gain / math.sqrt(p[0].numel()))
                else:
                    p.zero_()


def unet_config(arch: str) -> dict:
    """The UNetModel keyword arguments of an architecture: a tiny SD15-detected layout or a real one."""
    common = dict(image_size=32, use_spatial_transformer=True, legacy=False, use_checkpoint=False,
                  use_temporal_resblock=False, use_temporal_attention=False)
    if arch in FULL or arch in FAMILIES:
        return dict(common, **FULL.get(arch, FAMILIES.get(arch)))
    if arch in LAYOUTS:
        return dict(common, in_channels=4, out_channels=4, model_channels=320, context_dim=768,
                    use_linear_in_transformer=False, adm_in_channels=None, num_heads=8, num_head_channels=-1,
                    **LAYOUTS[arch])
    raise ValueError(f"layout '{arch}' is unknown; choose one of {sorted(LAYOUTS) + sorted(FAMILIES) + sorted(FULL)}")


def random_state_dict(arch: str = "tiny", fp16: bool = True, seed: int = 0) -> dict:
    """A checkpoint state dict with random weights (UNet, CLIP-L — plus CLIP-G for SDXL — and TAESD), built from
    ComfyUI's own classes; ComfyUI must be importable. Weights are created in float16 when ``fp16``."""
    import torch
    from comfy.cli_args import args as comfy_args

    if "comfy.model_management" not in sys.modules:
        comfy_args.cpu = True  # a CPU-only torch needs this before model_management is imported
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.taesd.taesd
    import comfy.text_encoders.sd2_clip
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    dtype = torch.float16 if fp16 else torch.float32
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.inference_mode(False):
            unet = UNetModel(**unet_config(arch), dtype=dtype, device="cpu", operations=comfy.ops.disable_weight_init)
            _init_(unet)
            sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
            del unet
            expected = DETECTED.get(arch, "SD15")
            detected = comfy.model_detection.model_config_from_unet_config(
                comfy.model_detection.detect_unet_config(sd, "model.diffusion_model."), sd)
            if type(detected).__name__ != expected:
                raise RuntimeError(f"ComfyUI detects layout {arch} as {type(detected).__name__}, not {expected}")
            if expected == "SDXL":
                clip = comfy.sdxl_clip.SDXLClipModel(device="cpu", dtype=dtype)
                _init_(clip, embed_std=1.0)
                sd.update({"conditioner.embedders.0.transformer." + k: v
                           for k, v in clip.clip_l.transformer.state_dict().items()})
                sd.update({"conditioner.embedders.1.model.transformer." + k: v
                           for k, v in clip.clip_g.transformer.state_dict().items()})
            elif expected == "SD20":
                clip = comfy.text_encoders.sd2_clip.SD2ClipHModel(device="cpu", dtype=dtype)
                _init_(clip.transformer, embed_std=1.0)
                sd.update({"cond_stage_model.model.transformer." + k: v
                           for k, v in clip.transformer.state_dict().items()})
            else:
                clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=dtype)
                _init_(clip.transformer, embed_std=1.0)
                sd.update({"cond_stage_model.transformer." + k: v for k, v in clip.transformer.state_dict().items()})
            del clip
            taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
            _init_(taesd)
            with torch.no_grad():
                taesd.vae_scale.fill_(1.0)
                taesd.vae_shift.fill_(0.0)
            sd.update({"first_stage_model." + k: v for k, v in taesd.state_dict().items()})
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def build(out_path: str, layout: str = "tiny", fp16: bool = True, seed: int = 0) -> dict:
    """Write the checkpoint; returns parameter counts. ComfyUI must be importable."""
    import safetensors.torch

    sd = random_state_dict(layout, fp16, seed)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    safetensors.torch.save_file(sd, out_path)
    count = lambda prefix: sum(v.numel() for k, v in sd.items() if k.startswith(prefix))  # noqa: E731
    return {"unet": count("model."), "clip": count("cond_stage_model.") + count("conditioner."),
            "vae": count("first_stage_model.")}


def build_controlnet(out_path: str, layout: str = "tiny", seed: int = 1) -> int:
    """Write a random-weight ControlNet (pth layout, ``control_model.`` keys) matching the tiny UNet; returns its
    parameter count. Its zero convolutions are random too, so it changes the UNet's output."""
    import comfy.ops
    import safetensors.torch
    import torch
    from comfy.cldm.cldm import ControlNet

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        cfg = {k: v for k, v in unet_config(layout).items()
               if k not in ("out_channels", "transformer_depth_output", "use_temporal_resblock",
                            "use_temporal_attention")}
        cfg["hint_channels"] = 3
        with torch.inference_mode(False):
            net = ControlNet(**cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
            _init_(net)
            sd = {"control_model." + k: v.half().contiguous() for k, v in net.state_dict().items()}
    finally:
        torch.random.set_rng_state(gen_state)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    safetensors.torch.save_file(sd, out_path)
    return sum(v.numel() for v in sd.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layout", default="tiny", choices=sorted(LAYOUTS) + sorted(FAMILIES) + sorted(FULL))
    ap.add_argument("--fp32", action="store_true", help="store float32 (default float16, half the size)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = build(a.out, a.layout, fp16=not a.fp32, seed=a.seed)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in counts.items()))


if __name__ == "__main__":
    main()
