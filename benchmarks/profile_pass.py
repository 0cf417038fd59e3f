"""Where one gradient pass spends its time: torch.profiler over the guided steps of a short run, per-op table.

    .venv/bin/python benchmarks/profile_pass.py --arch toy --steps 6
    .venv/bin/python benchmarks/profile_pass.py --arch tiny --size 128 --steps 6

Runs T-SAM (no refinement) on the chosen model with the stock KSampler (Apply Guidance) and profiles only the
gradient passes (the pack's ``GradientPass.__call__``), then prints the operators by self CPU time and how the
pass's wall time splits into the UNet's own work (convolutions, matmuls, norms, attention) and the rest.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: operators that are the network's own arithmetic (forward or backward), by name fragment
UNET_OPS = ("conv", "mm", "matmul", "linear", "addmm", "bmm", "norm", "softmax", "silu", "gelu", "attention", "mul",
            "add", "sub", "div", "exp", "baddbmm", "sum", "mean", "sigmoid")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="toy", help="toy or tiny")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args(argv)
    import bench_methods
    import headless
    import torch
    from torch.profiler import ProfilerActivity, profile

    host = headless.ComfyHost(headless.require_comfyui(), Path(tempfile.mkdtemp(prefix="aa_profile_")))
    import nodes as comfy_nodes

    model, clip, prompt, level, words = bench_methods.load_model(host, a.arch)
    ta, _, positive = host.node_class("AttentionAlignTextSelfAttention").execute(clip, prompt, "auto", 3.0).args
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    guided = host.pack_module("nodes.host.guided")
    gp_module = host.pack_module("nodes.host.gradient_pass")
    guidance = bench_methods.method_guidance(host, "tsam", ta, level, words)
    m, _ = guided.guided_model(model, guidance)
    latent = {"samples": torch.zeros(1, 4, a.size // 8, a.size // 8)}
    comfy_nodes.common_ksampler(m, 1, a.steps, 7.5, "euler", "normal", positive, negative, latent)   # warm-up

    original = gp_module.GradientPass.__call__
    walls: list[float] = []
    prof_box = {}

    def profiled(self, x):
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            out = original(self, x)
        walls.append(time.perf_counter() - t0)
        prof_box.setdefault("events", []).extend(prof.key_averages())
        return out

    gp_module.GradientPass.__call__ = profiled
    try:
        comfy_nodes.common_ksampler(m, 1, a.steps, 7.5, "euler", "normal", positive, negative, latent)
    finally:
        gp_module.GradientPass.__call__ = original
    totals: dict[str, list[float]] = {}
    for e in prof_box.get("events", []):
        entry = totals.setdefault(e.key, [0.0, 0])
        entry[0] += e.self_cpu_time_total
        entry[1] += e.count
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    total_us = sum(v[0] for v in totals.values())
    unet_us = sum(v[0] for k, v in totals.items() if any(f in k.lower() for f in UNET_OPS))
    print(f"{len(walls)} gradient passes, {sum(walls) / max(len(walls), 1) * 1000:.1f} ms each (wall, profiled)")
    print(f"{'operator':48s} {'self ms':>9s} {'share':>6s} {'calls':>6s}")
    for name, (us, count) in rows[:a.rows]:
        print(f"{name[:48]:48s} {us / 1000:9.1f} {us / total_us:6.1%} {count:6d}")
    print(f"arithmetic of the network (conv/matmul/norm/attention/elementwise, forward and backward): "
          f"{unet_us / total_us:.1%} of self CPU time; the rest ({1 - unet_us / total_us:.1%}) is copies, "
          "conversions, indexing and bookkeeping")


if __name__ == "__main__":
    main()
