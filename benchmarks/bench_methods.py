"""Time and peak memory of every method against plain sampling, in one process and one run.

Builds a random-weight model from ComfyUI's own classes (the tiny test model, or the full SD1.5 / SDXL
architecture — random weights give honest timings), runs a plain KSampler and each method at the same settings
(same seed, steps, CFG, sampler), and prints for each: seconds, the ratio to plain, the lower bound of that ratio
from FLOPs (benchmarks/flops.py, with the refinement iterations actually run), peak memory and its ratio to plain,
and the per-step loss. ``*_fast`` are the gradient methods in fast mode (loss and gradient from the sampler's own
evaluation; no refinement); their bound counts one input backward per guided step and no extra forward.

    .venv/bin/python benchmarks/bench_methods.py --arch tiny --size 128 --steps 20            # CPU, seconds
    .venv/bin/python benchmarks/bench_methods.py --arch toy --size 128 --steps 20             # the trained toy
    .venv/bin/python benchmarks/bench_methods.py --arch sd15_full --size 512 --steps 50       # on a GPU
    .venv/bin/python benchmarks/bench_methods.py --arch sdxl_full --size 1024 --steps 50      # on a GPU
    .venv/bin/python benchmarks/bench_methods.py --arch flux_tiny --size 128 --steps 20       # DiTs: CPU trend
    .venv/bin/python benchmarks/bench_methods.py --arch flux_dev --size 1024 --steps 20       # on a GPU (12 B)
    .venv/bin/python benchmarks/bench_methods.py --arch sd35_medium --size 1024 --steps 40    # on a GPU

On a GPU ComfyUI runs the UNet in fp16 (or bf16) with its fastest attention; the pack's probabilities and losses stay
float32. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the process's peak RSS (sampled every 5 ms)
on the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from headless import pack  # noqa: E402

PROMPT = "a red car and a blue bench"
WORDS = {"subjects": "car, bench", "groups": "red car; blue bench"}
TOY_CKPT = "attention-align/toy_shapes.safetensors"            # the shipped file, as Load Toy Model lists it
TOY_PROMPT = "a red circle and a blue square"
TOY_WORDS = {"subjects": "circle, square", "groups": "red circle; blue square"}
REGISTRY = pack("nodes.registry")


def _variants(m) -> list[str]:
    """A method, its refining variant (where it refines; the plain one does not) and its fast-mode variant."""
    return [m.key] + ([f"{m.key}_refine"] if m.refine_off else []) + ([f"{m.key}_fast"] if m.fast else [])


#: what runs on UNets; on Flux and SD3/SD3.5, and the DiT architectures (scripts/tiny_dit.py): the tiny ones on a
#: CPU, the real ones (random weights) on a GPU
METHODS = [v for m in REGISTRY.METHODS if m.unet for v in _variants(m)]
DIT_METHODS = [v for m in REGISTRY.METHODS if m.dit for v in _variants(m)]
DIT_ARCHS = {"flux_tiny": ("flux", "tiny", 1.0), "sd35_tiny": ("sd35", "tiny", 4.5),
             "flux_dev": ("flux", "flux_dev", 1.0), "sd35_medium": ("sd35", "sd35_medium", 4.5)}


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process RSS sampled in a thread."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak = cuda, 0

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            self._proc, self._stop = psutil.Process(), False
            self.peak = self._proc.memory_info().rss

            def sample():
                while not self._stop:
                    self.peak = max(self.peak, self._proc.memory_info().rss)
                    time.sleep(0.005)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._thread.join()
        self.seconds = time.perf_counter() - self.t0
        return False


def method_guidance(host, name: str, ta, level: int = 32, words: dict | None = None, dit_blocks: str = "all"):
    """The GUIDANCE of a method at its official configuration — its node's defaults — with its typed words, the
    benchmark's level (for methods that read one) and ``dit_blocks``; refinement only in the *_refine variants, fast
    mode in the *_fast ones."""
    key = name.removesuffix("_refine").removesuffix("_fast")
    m = next((m for m in REGISTRY.METHODS if m.key == key), None)
    if m is None or name not in METHODS + DIT_METHODS:
        raise ValueError(f"unknown method {name}; choose from {', '.join(DIT_METHODS)}")
    inputs = host.widget_defaults(m.node.node_id)
    for input_name, value in (("level", level), ("dit_blocks", dit_blocks), ("fast", name.endswith("_fast"))):
        if input_name in inputs:
            inputs[input_name] = value
    if m.refine_off is not None and not name.endswith("_refine"):
        inputs[m.refine_off[0]] = m.refine_off[1]
    if m.word_input:
        inputs[m.word_input] = (words or WORDS)[m.word_field]
    if m.text_attention:
        inputs["text_attention"] = ta
    return host.node_class(m.node.node_id).execute(**inputs).args[0]


def load_model(host, arch: str):
    """``(model, clip, prompt, level, words)``: the pack's trained toy model with its own words, or a random-weight
    model of ``arch`` built from ComfyUI's classes (no file written) with the benchmark's prompt."""
    if arch == "toy":
        model, clip, _vae = host.node_class("AttentionAlignLoadToyModel").execute(TOY_CKPT).args
        return model, clip, TOY_PROMPT, 16, TOY_WORDS
    if arch in DIT_ARCHS:
        import tiny_dit
        import torch

        family, config, _ = DIT_ARCHS[arch]
        full = config != "tiny"
        dtype = torch.bfloat16 if full else None             # the real architectures as ComfyUI runs them on a GPU
        if family == "flux":
            return tiny_dit.flux_model(config, dtype=dtype), tiny_dit.flux_clip(full_width=full), PROMPT, 16, WORDS
        return tiny_dit.mmdit_model(config, dtype=dtype), tiny_dit.sd3_clip(full_width=full), PROMPT, 16, WORDS
    import comfy.sd
    import folder_paths
    import tiny_checkpoint

    sd = tiny_checkpoint.random_state_dict(arch, fp16=True)
    model, clip, _vae, _ = comfy.sd.load_state_dict_guess_config(
        sd, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))
    return model, clip, PROMPT, 32, WORDS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="tiny", help="tiny or toy (CPU), sd15_full or sdxl_full (random weights); "
                                                       "DiTs: flux_tiny, sd35_tiny (CPU), flux_dev, sd35_medium")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=None, help="default 7.5; Flux 1 (guidance-distilled), SD3.5 4.5")
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--methods", default=None, help="comma-separated; default every method the model runs")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run plain and every method this many times, interleaved; report the medians")
    ap.add_argument("--cpu", action="store_true", help="force the CPU even if a GPU is present")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--dit-blocks", default="all", choices=["all", "double"],
                    help="DiTs: the blocks the losses read and Regulation edits (the methods' dit_blocks input)")
    a = ap.parse_args()
    dit = a.arch in DIT_ARCHS
    if a.cfg is None:
        a.cfg = DIT_ARCHS[a.arch][2] if dit else 7.5
    if a.methods is None:
        a.methods = ",".join(DIT_METHODS if dit else METHODS)

    import flops
    import headless
    import torch

    cuda = torch.cuda.is_available() and not a.cpu
    comfy = headless.require_comfyui()
    host = headless.ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_bench_")), cpu=not cuda)
    import nodes as comfy_nodes

    t0 = time.perf_counter()
    model, clip, prompt, level, words = load_model(host, a.arch)
    print(f"model {a.arch}: built and loaded in {time.perf_counter() - t0:.0f} s; device "
          f"{torch.cuda.get_device_name() if cuda else 'CPU'}; UNet dtype {model.model.get_dtype()}")
    ta, _, positive = host.node_class("AttentionAlignTextSelfAttention").execute(clip, prompt, "auto", 3.0).args
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    counts = flops.dit_flops(a.arch, a.size, a.dit_blocks) if dit else flops.unet_flops(a.arch, a.size, level)
    cost = flops.pass_cost(counts)
    guided = host.pack_module("nodes.host.guided")

    channels, scheduler = (16, "simple") if dit else (4, "normal")

    def run(m, label):
        latent = {"samples": torch.zeros(1, channels, a.size // 8, a.size // 8)}
        with PeakMemory(cuda) as pm:
            comfy_nodes.common_ksampler(m, 1, a.steps, a.cfg, a.sampler, scheduler, positive, negative, latent)
        return pm.seconds, pm.peak

    run(model, "warm-up")                                          # loads the model onto the device
    names = a.methods.split(",")
    patched = {name: guided.guided_model(model, method_guidance(host, name, ta, level, words, a.dit_blocks))
               for name in names}
    timings: dict[str, list[tuple[float, int]]] = {"plain": [], **{name: [] for name in names}}
    for _ in range(a.repeats):                                     # interleaved, so drifts hit every method alike
        timings["plain"].append(run(model, "plain"))
        for name in names:
            timings[name].append(run(patched[name][0], name))

    def median(name):
        ordered = sorted(timings[name])
        return ordered[len(ordered) // 2]

    plain_s, plain_mem = median("plain")
    rows = [{"method": "plain", "seconds": plain_s, "ratio": 1.0, "bound": 1.0, "peak_mib": plain_mem / 2 ** 20,
             "mem_ratio": 1.0}]
    print(f"{'method':24s} {'s':>8s} {'ratio':>7s} {'bound':>7s} {'peak MiB':>9s} {'mem':>6s}  notes")
    print(f"{'plain':24s} {plain_s:8.2f} {1:7.3f} {1:7.3f} {plain_mem / 2 ** 20:9.0f} {1:6.3f}")
    for name in names:
        log = patched[name][1].records[-1]                         # the board's newest run of this method
        seconds, peak = median(name)
        iterations = sum(int(r.iterations.max()) for r in log.steps if r.iterations is not None)
        gradient = log.path != "attention edit"
        n_guided = len(log.steps) if gradient else 0
        fast = name.endswith("_fast")
        bound = flops.bound(flops.fast_cost(counts) if fast else cost, a.steps, n_guided, iterations,
                            2 if a.cfg != 1 else 1)
        losses = [round(float(r.loss_before.mean()), 4) for r in log.steps]
        note = (f"{n_guided} guided steps, {iterations} refinement iterations; loss per step {losses[:6]}"
                f"{'…' if len(losses) > 6 else ''}") if gradient else \
            (f"regulation loss per step (before→best) "
             f"{[(round(float(r.losses[0]), 3), round(float(r.losses[-1]), 3)) for r in log.steps[:3]]}…"
             if log.steps else "no loss (attention edit)")
        rows.append({"method": name, "seconds": seconds, "ratio": seconds / plain_s, "bound": bound,
                     "peak_mib": peak / 2 ** 20, "mem_ratio": peak / plain_mem, "guided_steps": n_guided,
                     "refinement_iterations": iterations, "loss_per_step": losses})
        print(f"{name:24s} {seconds:8.2f} {seconds / plain_s:7.3f} {bound:7.3f} {peak / 2 ** 20:9.0f} "
              f"{peak / plain_mem:6.3f}  {note}")
    print(f"one gradient pass = {cost:.3f} {'DiT' if dit else 'UNet'} forwards (truncated forward {counts['truncated'] / counts['full']:.1%}"
          f" + input backward {counts['backward'] / counts['full']:.1%} of a full forward, FLOPs)")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "device": "cuda" if cuda else "cpu",
                                            "pass_cost": cost, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
