"""FLOPs of ComfyUI's UNet (or DiT: Flux, SD3.5) for the gradient pass, counted on meta tensors (no memory, no
weights, no GPU).

Measures, for one architecture, latent size and loss level, with ``torch.utils.flop_counter``:
  * a full forward (batch 1);
  * the truncated forward the pack's gradient pass runs (it stops after the last cross-attention layer at the loss's
    level, through the same ``StopForward`` mechanism, with explicit probabilities at that level's layers);
  * the backward of the truncated pass to the input latent only (the weights are frozen).
From these: the cost of one gradient pass in forwards, and the lower bound of a guided run's time,
``(c·N + g·(G + R)) / (c·N)`` for N steps of c forwards each (c = 2 with CFG), G guided steps, R refinement iterations.

    .venv/bin/python benchmarks/flops.py --arch sd15_full --size 512
    .venv/bin/python benchmarks/flops.py --arch flux_dev --size 1024        # Flux-dev's architecture (12 B)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def pack():
    """The pack's modules these counts use (its routers, run context and update loop), without ComfyUI's loader."""
    import headless

    return headless.pack("nodes.host.routers"), headless.pack("nodes.host.context"), headless.pack("guidance.engine")


def unet_layer_keys(unet, level: int) -> list[tuple[str, int, int]]:
    """attn2 replace keys at one level (image pixels per map pixel), in forward order: the pack's own layer walk
    (nodes/host/backend.py), which needs ComfyUI importable."""
    pack()
    from attention_align.nodes.host.backend import layers_at, unet_layers

    return [layer.key for layer in layers_at(unet_layers(unet), level)]


def host_importable() -> None:
    """ComfyUI on ``sys.path``, on the CPU (only its classes are used, on meta tensors)."""
    import headless

    comfy_path = headless.require_comfyui()
    if str(comfy_path) not in sys.path:
        sys.path.insert(0, str(comfy_path))
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = True


def unet_flops(arch: str, size: int, level: int = 32) -> dict:
    """FLOP counts (multiply-adds × 2) of the full forward, the truncated forward and its input backward."""
    import tiny_checkpoint
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    host_importable()
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    routers, context, engine = pack()
    if arch == "toy":                                   # the pack's toy model (toy/model.py)
        from toy.model import TOY_CONFIG

        cfg = dict(TOY_CONFIG["unet"])
    else:
        cfg = tiny_checkpoint.unet_config(arch)
    unet = UNetModel(**cfg, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    layers = unet_layer_keys(unet, level)
    h = w = size // 8
    x = torch.empty(1, 4, h, w, device="meta")
    t = torch.zeros(1, device="meta")
    ctx = torch.empty(1, 77, cfg["context_dim"], device="meta")
    y = torch.empty(1, cfg["adm_in_channels"], device="meta") if cfg.get("adm_in_channels") else None

    def basic(func, *a, **kw):                      # plain matmul attention everywhere (countable on meta)
        return comfy_attention.attention_basic(*a, **kw)

    def options(store=None):
        replace = routers.CrossAttentionReplace(comfy_attention.attention_basic)
        to = {"optimized_attention_override": basic,
              "patches_replace": {"attn2": {key: replace for key in layers}}}
        if store is not None:
            to[context.PASS_KEY] = {"grad_pass": True, "observers": [store]}
        return to

    with torch.no_grad(), FlopCounterMode(display=False) as full:
        unet(x, timesteps=t, context=ctx, y=y, transformer_options=options())
    z = x.clone().requires_grad_(True)
    store = engine.PassMaps(layers, truncate=True)
    with torch.enable_grad(), FlopCounterMode(display=False) as forward:
        try:
            unet(z, timesteps=t, context=ctx, y=y, transformer_options=options(store))
        except engine.StopForward:
            pass
        loss = store.maps().sum()
    with FlopCounterMode(display=False) as backward:
        torch.autograd.grad(loss, z)
    return {"arch": arch, "size": size, "level": level, "layers": len(layers), "last_layer": layers[-1],
            "full": full.get_total_flops(), "truncated": forward.get_total_flops(),
            "backward": backward.get_total_flops()}


#: the DiT architectures (scripts/tiny_dit.py) and the text tokens their context has (Flux: T5 at ComfyUI's 256;
#: SD3: CLIP-L/G 77 + T5 77)
DIT_TEXT = {"flux_tiny": 256, "flux_dev": 256, "sd35_tiny": 154, "sd35_medium": 154}


def is_dit(arch: str) -> bool:
    return arch in DIT_TEXT


def dit_flops(arch: str, size: int, blocks: str = "all") -> dict:
    """The counts of :func:`unet_flops` for a DiT: the gradient pass reads every joint block (the losses' maps
    average them all), so its forward is the whole network plus the image→text probabilities of each block, and
    nothing is truncated."""
    import tiny_dit
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    host_importable()
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    routers, context, engine = pack()
    from attention_align.guidance.joint_attention import JointLayout
    from attention_align.nodes.host import backend

    ops, kind = comfy.ops.disable_weight_init, arch.split("_")[0]
    key = arch.replace("flux_", "").replace("sd35_", "")
    if kind == "flux":
        cfg = dict(tiny_dit.FLUX["tiny" if key == "tiny" else "flux_dev"])
        dm = Flux(**cfg, dtype=torch.float32, device="meta", operations=ops)
        width, pooled = cfg["context_in_dim"], cfg["vec_in_dim"]
    else:
        cfg = dict(tiny_dit.MMDIT["tiny" if key == "tiny" else "sd35_medium"])
        dm = OpenAISignatureMMDITWrapper(**cfg, dtype=torch.float32, device="meta", operations=ops)
        width, pooled = cfg["context_embedder_config"]["params"]["in_features"], cfg["adm_in_channels"]
    dm.requires_grad_(False)                           # frozen, as the gradient pass meets them
    layers = [layer.key for layer in backend.joint_layers(dm) if blocks == "all" or layer.key[0] == "double"]
    h = w = size // 8
    text = DIT_TEXT[arch]
    x = torch.empty(1, 16, h, w, device="meta")
    t = torch.zeros(1, device="meta")
    ctx = torch.empty(1, text, width, device="meta")
    y = torch.empty(1, pooled, device="meta")

    def basic(func, *a, **kw):                      # plain matmul attention everywhere (countable on meta)
        return comfy_attention.attention_basic(*a, **kw)

    def options(store=None):
        to = {"optimized_attention_override": basic}
        if store is not None:
            to["patches_replace"] = {"dit": {(backend.REPLACE_NAME[k[0]], k[1]): routers.JointBlockRouter((k[0], k[1])) for k in layers}}
            to[routers.GEOMETRY_KEY] = (JointLayout(text, (-(-h // 2), -(-w // 2))), (h, w))
            to[context.PASS_KEY] = {"grad_pass": True, "observers": [store]}
        return to

    def forward(z, to):
        if kind == "flux":
            return dm(z, t, ctx, y, guidance=torch.zeros(1, device="meta"), transformer_options=to)
        return dm(z, t, context=ctx, y=y, transformer_options=to)

    with torch.no_grad(), FlopCounterMode(display=False) as full:
        forward(x, options())
    z = x.clone().requires_grad_(True)
    store = engine.PassMaps(layers, truncate=True)
    # Flux adds its residuals in place; the gradient pass lets autograd copy a saved tensor when it is changed
    # (allow_mutation_on_saved_tensors, which cannot track meta tensors). Here every saved tensor is copied when
    # saved: the same products, so the same FLOPs (a copy counts none).
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        with torch.enable_grad(), FlopCounterMode(display=False) as fwd:
            try:
                forward(z, options(store))
            except engine.StopForward:
                pass
            loss = store.maps().sum()
        with FlopCounterMode(display=False) as backward:
            torch.autograd.grad(loss, z)
    return {"arch": arch, "size": size, "level": 16, "layers": len(layers), "last_layer": layers[-1],
            "full": full.get_total_flops(), "truncated": fwd.get_total_flops(),
            "backward": backward.get_total_flops()}


def pass_cost(counts: dict) -> float:
    """One gradient pass (truncated forward + input backward) in full forwards."""
    return (counts["truncated"] + counts["backward"]) / counts["full"]


def fast_cost(counts: dict) -> float:
    """One fast-mode guided step (the input backward only: the forward is the sampler's own) in full forwards."""
    return counts["backward"] / counts["full"]


def bound(cost: float, steps: int, guided: int, refinement_iterations: int = 0, cfg_forwards: int = 2) -> float:
    """Lower bound of the guided/plain time ratio from FLOPs alone."""
    return (cfg_forwards * steps + cost * (guided + refinement_iterations)) / (cfg_forwards * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description="FLOP fractions of the truncated gradient pass")
    ap.add_argument("--arch", default="sd15_full", help="tiny, sd15, sd15_full or sdxl_full; DiTs: flux_dev, "
                                                            "sd35_medium (and flux_tiny, sd35_tiny)")
    ap.add_argument("--size", type=int, default=512, help="image size in px")
    ap.add_argument("--level", type=int, default=32, help="image divisor of the loss's maps (DiTs: always 16)")
    ap.add_argument("--dit-blocks", default="all", choices=["all", "double"],
                    help="DiTs: the blocks the loss reads (the methods' dit_blocks input)")
    a = ap.parse_args()
    c = dit_flops(a.arch, a.size, a.dit_blocks) if is_dit(a.arch) else unet_flops(a.arch, a.size, a.level)
    a.level = c["level"]
    cost = pass_cost(c)
    print(f"{a.arch} @ {a.size}px, loss at image ÷{a.level} ({c['layers']} layers, last {c['last_layer']}):")
    print(f"  full forward {c['full'] / 1e9:.1f} GFLOP; truncated forward {c['truncated'] / c['full']:.1%} of it; "
          f"input backward {c['backward'] / c['full']:.1%}; one gradient pass = {cost:.3f} forwards")
    if is_dit(a.arch):                      # T-SAM does not run on DiTs; Flux-dev samples at cfg 1 (one forward)
        forwards = 1 if a.arch.startswith("flux") else 2
        methods = ((25, f"A&E / SynGen (25 of 50), 50 steps, {'cfg 1' if forwards == 1 else 'CFG'}"),)
    else:
        forwards = 2
        methods = ((25, "A&E / SynGen (25 of 50), 50 steps, CFG"), (30, "T-SAM (30 of 50), 50 steps, CFG"))
    for guided, label in methods:
        print(f"  bound {label}: exact {bound(cost, 50, guided, cfg_forwards=forwards):.3f}×, "
              f"fast {bound(fast_cost(c), 50, guided, cfg_forwards=forwards):.3f}×, "
              f"+{cost / (forwards * 50):.2%} per refinement iteration")


if __name__ == "__main__":
    main()
