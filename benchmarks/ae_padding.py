"""Attend-and-Excite with and without the padding in its softmax(100·A), on the DiTs' T5 contexts.

For each model — tiny Flux and tiny MMDiT (random weights, ComfyUI's own classes; ``scripts/tiny_dit.py``), and the
pack's toy model (CLIP-style context, for comparison) — and for each ``softmax`` choice (``official``: every token
after bos, padding included; ``normalize_eot``: the prompt's tokens only), it runs A&E at its official configuration
scaled to the run (refinement included) and prints, per guided step, the loss before the step's update, the loss
after it, and the refinement iterations; plus how many tokens share the softmax and the subjects' mean share of the
prompt's attention mass.

    .venv/bin/python benchmarks/ae_padding.py [--steps 10] [--size 256]

Random weights say nothing about images; what they show is the arithmetic of the choice: how many tokens the ×100
softmax spreads over, where the loss starts, and whether the refinement can reach its thresholds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PROMPT = "a red car and a blue bench"
SUBJECTS = "car, bench"
TOY_PROMPT, TOY_SUBJECTS = "a red circle and a blue square", "circle, square"


def run(host, model, clip, prompt: str, subjects: str, softmax: str, *, steps: int, size: int, cfg: float,
        channels: int, level: int) -> dict:
    import nodes as comfy_nodes
    import torch

    ta, _, positive = host.node_class("AttentionAlignTextSelfAttention").execute(clip, prompt, "auto", 3.0).args
    node = host.node_class("AttentionAlignAttendExcite")
    inputs = {**host.widget_defaults("AttentionAlignAttendExcite"), "subjects": subjects, "softmax": softmax,
              "level": level}
    guidance = node.execute(text_attention=ta, **inputs).args[0]
    guided, board = host.pack_module("nodes.host.guided").guided_model(model, guidance, verify=True)
    captured, maps_board = host.pack_module("nodes.host.guided").captured_model(guided, level)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.zeros(1, channels, size // 8, size // 8)}
    comfy_nodes.common_ksampler(captured, 0, steps, cfg, "euler", "simple", positive, negative, latent)
    log = board.records[-1]
    obj = guidance.objective
    last = obj.eos_index if obj.normalize_eot else obj.end - 1
    maps = maps_board.records[-1].mean(level)                                 # [1, T, h, w], the run's mean
    prompt_mass = maps[:, ta.prompt_slice].sum(1, keepdim=True)
    share = torch.stack([maps[:, list(s)].sum(1) for s in obj.subjects], 1) / prompt_mass
    return {"tokens": last - obj.first, "share": float(share.mean()),
            "steps": [(r.step, float(r.loss_before[0]), float(r.loss_after[0]),
                       int(r.iterations.max()) if r.iterations is not None else 0) for r in log.steps]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    import headless
    import tiny_dit

    host = headless.ComfyHost(headless.require_comfyui(), Path(tempfile.mkdtemp(prefix="aa_pad_")))
    models = {"flux_tiny": (tiny_dit.flux_model(), tiny_dit.flux_clip(), PROMPT, SUBJECTS, 1.0, 16),
              "sd35_tiny": (tiny_dit.mmdit_model(), tiny_dit.sd3_clip(), PROMPT, SUBJECTS, 4.5, 16)}
    model, clip, _vae = host.node_class("AttentionAlignLoadToyModel").execute(
        "attention-align/toy_shapes.safetensors").args
    models["toy"] = (model, clip, TOY_PROMPT, TOY_SUBJECTS, 5.0, 4)
    print(f"{a.steps} euler steps at {a.size}², A&E official configuration scaled to the run (refinement on)")
    for name, (model, clip, prompt, subjects, cfg, channels) in models.items():
        level, size = (16, 128) if name == "toy" else (16, a.size)
        for softmax in ("official", "normalize_eot"):
            r = run(host, model, clip, prompt, subjects, softmax, steps=a.steps, size=size, cfg=cfg,
                    channels=channels, level=level)
            steps = "  ".join(f"{s}: {b:.3f}→{f:.3f}" + (f" ({it} it)" if it else "") for s, b, f, it in r["steps"])
            print(f"{name:10s} {softmax:14s} {r['tokens']:4d} tokens in the softmax, subjects' share of the prompt's "
                  f"mass {r['share']:.3f} | {steps}")


if __name__ == "__main__":
    main()
