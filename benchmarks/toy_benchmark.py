"""Does each method change what an image shows? The toy model, held-out prompts, the exact judge, 95 % intervals.

    .venv/bin/python benchmarks/toy_benchmark.py --quick                    # minutes: README/CI size
    .venv/bin/python benchmarks/toy_benchmark.py --out out/toy_benchmark    # the full run (hours on 2 CPU cores)

What it does, in one process on ComfyUI's own nodes (Load Toy Model, Text Self-Attention, each method's node, the
Guided KSampler, the stock KSampler, VAE Decode):

* Prompts: ``toy.scenes.evaluation_prompts`` (default 100 two-object and 50 three-object prompts; every one holds
  a colour–shape pair or a shape pair that training never showed). Each prompt is sampled ``--samples`` times
  (one latent batch, noise from seed = the prompt's index), identically for every method.
* Methods at their official configurations (T-SAM with both losses, Attend-and-Excite, SynGen, Attention Regulation,
  Attention Modulation at the pack's defaults) and, with ``--sweep``, at other strengths (gradient methods: the
  strength multiplier; Attention Regulation: the learning rate; Attention Modulation: the noun/attribute weights).
  Words come from each prompt's structure (subjects = the shapes, groups = colour + shape), as a user would type
  them, so token selection is never what is measured.
* The judge (``toy.judge``) reads every image back into objects: object presence (share of mentioned objects
  found), attribute binding (share found *with the mentioned colour*), whole-prompt accuracy (every object present
  and bound, nothing extra). Per prompt the mean over its samples; 95 % intervals by a bootstrap over prompts, and
  for each method its paired difference to unguided on the same prompts and noise.
* Time: each method's sampling seconds over unguided's, summed over the same prompts in this run.
* Localisation: do the model's cross-attention maps sit on the objects at all? For each prompt a ground-truth scene
  of its objects is rendered, encoded and partly re-noised (img2img at ``--loc-denoise``) while Capture
  Cross-Attention records; each noun's map (and each colour word's), renormalised over the prompt's words (start,
  end and padding dropped), is compared with the true object mask: IoU of the map thresholded at 0.4 × its
  maximum, whether its peak falls on the object, and the attention's shares on start, end, padding and words
  (``toy_targets.localisation``, the measure of ``toy.judge.word_map_scores``).
* The prompts, scenes and split are those of the world the file was trained in (``toy.model.world_of``).

Everything is written to ``--out``: ``images.jsonl`` (one line per image, resumable: a rerun skips what is done),
``summary.md`` (the tables), ``summary.json``, ``grid.png`` (rows = prompts, columns = unguided and each method at
its official setting, same noise; under each image the maps of its nouns).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from headless import pack  # noqa: E402

REGISTRY = pack("nodes.registry")

TOY_FILE = "attention-align/toy_shapes.safetensors"
LEVEL = 16                                   # the toy model's 8×8 maps (its coarser cross-attention level)


@dataclass(frozen=True)
class Config:
    """One column of the comparison: a method (its registry entry) at its official configuration — its node's
    defaults — with ``inputs`` set apart from them and a strength ``factor`` (:func:`swept`); words are added per
    prompt."""

    name: str
    method: object | None                    # nodes.registry.Method; None: unguided (the stock KSampler)
    inputs: dict = field(default_factory=dict)
    factor: float = 1.0
    official: bool = True

    @property
    def node(self) -> str | None:
        return None if self.method is None else self.method.node.node_id


def swept(inputs: dict, sweep: str, factor: float) -> dict:
    """A method's inputs at another strength: ×factor on the gradient methods' strength and on Attention
    Regulation's learning rate, and on Attention Modulation's (weight − 1)."""
    out = dict(inputs)
    if factor == 1.0:
        return out
    if sweep == "weights":
        for name in ("noun_weight", "attribute_weight"):
            out[name] = 1 + (out[name] - 1) * factor
    else:
        out[sweep] = out[sweep] * factor
    return out


def official_configs() -> list[Config]:
    """Every method that runs on the toy model (a UNet) at its official configuration (T-SAM with both losses);
    Attend-and-Excite also with the official code's other softmax (``normalize_eot``, its SD 2.1 setting: the toy
    model's CLIP-L-style encoder gets the SD1 setting, padding in the softmax, by default). The benchmark's
    ``--level`` replaces the level of those that read one level."""
    out = [Config("unguided", None)]
    for m in REGISTRY.METHODS:
        if m.unet:
            out.append(Config(m.key, m))
            if m.key == "tsam":
                out.append(Config("tsam_cosine", m, {"loss": "cosine"}))
            if m.key == "attend_excite":                 # the official code's SD 2.1 softmax, padding left out
                out.append(Config("attend_excite_eot", m, {"softmax": "normalize_eot"}))
    return out


def fast_configs() -> list[Config]:
    """The gradient methods in fast mode (loss and gradient from the sampler's own evaluation; no refinement)."""
    return [Config(f"{c.name}_fast", c.method, {**c.inputs, "fast": True}, official=False)
            for c in official_configs() if c.method is not None and c.method.fast]


def sweep_configs(factors: list[float]) -> list[Config]:
    """Each method at other strengths (:func:`swept`)."""
    return [Config(f"{c.name}@x{f:g}", c.method, c.inputs, factor=f, official=False)
            for c in official_configs()[1:] for f in factors if f != 1.0]


class Toy:
    """The toy model loaded in an in-process ComfyUI, and the nodes the benchmark runs."""

    def __init__(self, args):
        import headless

        comfy = headless.require_comfyui()
        self.host = headless.ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_toybench_")), cpu=not args.gpu)
        self.node = self.host.node_class
        self.model, self.clip, self.vae = self.node("AttentionAlignLoadToyModel").execute(args.ckpt).args
        self.negative = self.conditioning("")
        self.args = args
        from toy.model import world_of
        from toy.scenes import WORLDS

        #: the world the file was trained in: its scenes, and through them the split its evaluation holds out
        path = self.host.pack_module("nodes.toy_loader").resolve(args.ckpt)
        self.world = WORLDS[world_of(path, input_name="--ckpt")]
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()              # a resumed run's rows are this file's

    def conditioning(self, caption: str):
        """CLIP Text Encode's conditioning of ``caption``."""
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(caption))

    def encode(self, caption: str):
        ta, _, positive = self.node("AttentionAlignTextSelfAttention").execute(self.clip, caption, "auto", 3.0).args
        return ta, positive

    def sample(self, config: Config, prompt, ta, positive, seed: int):
        """(images uint8 [S, H, W, 3], seconds, guidance record or None, maps or None)."""
        import nodes as comfy_nodes
        import torch

        a = self.args
        latent = {"samples": torch.zeros(a.samples, 4, a.size // 8, a.size // 8)}
        t0 = time.perf_counter()
        record = maps = None
        if config.node is None:
            (out,) = comfy_nodes.common_ksampler(self.model, seed, a.steps, a.cfg, a.sampler, a.scheduler, positive,
                                                 self.negative, latent)
        else:
            m = config.method
            inputs = self.host.widget_defaults(m.node.node_id)
            if "level" in inputs:
                inputs["level"] = a.level
            inputs = swept({**inputs, **config.inputs}, m.sweep, config.factor)
            if m.word_input:
                from toy.scenes import typed_words

                inputs[m.word_input] = typed_words(prompt)[m.word_input]
            guidance = self.node(config.node).execute(text_attention=ta, **inputs).args[0]
            out, maps, record = self.node("AttentionAlignGuidedKSampler").execute(
                self.model, seed, a.steps, a.cfg, a.sampler, a.scheduler, positive, self.negative, latent, 1.0,
                guidance).args
        seconds = time.perf_counter() - t0
        images = self.vae.decode(out["samples"])                            # [S, H, W, 3] in 0..1
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return images, seconds, record, maps


def judge_images(images, prompt, size: int) -> list[dict]:
    from toy import judge

    rows = []
    for img in images:
        s = judge.score(judge.detect(img, image_size=size), prompt)
        rows.append({"present": list(s.present), "bound": list(s.bound), "extra": len(s.extra),
                     "correct": s.correct, "seen": [(d.shape, d.colour) for d in s.matched if d is not None]
                     + [(d.shape, d.colour) for d in s.extra]})
    return rows


def loss_summary(record) -> dict:
    if record is None or not record.steps:
        return {}
    first = record.steps[0]
    return {"loss_first": [float(v) for v in first.loss_before.reshape(-1)],
            "loss_last": [float(v) for v in record.steps[-1].loss_final.reshape(-1)],
            "guided_steps": len(record.steps),
            "refinement_iterations": sum(int(r.iterations.max()) for r in record.steps if r.iterations is not None),
            "halted": [bool(v) for v in (record.steps[-1].halted if record.steps[-1].halted is not None else [])]}


# ---------------------------------------------------------------------------------------------------- reporting
def per_prompt(rows: list[dict], key: str) -> dict[int, float]:
    """Mean over a prompt's images of a score: presence/binding as shares of mentions, correct as 0/1."""
    by: dict[int, list[float]] = {}
    for r in rows:
        v = r[key]
        by.setdefault(r["prompt"], []).append(float(np.mean(v)) if isinstance(v, list) else float(v))
    return {p: float(np.mean(v)) for p, v in by.items()}


def summarise(rows: list[dict], configs: list[Config], *, resamples: int = 2000) -> dict:
    from stats import bootstrap_ci, paired_bootstrap_ci

    by_config = {c.name: [r for r in rows if r["config"] == c.name] for c in configs}
    base = by_config.get("unguided", [])
    base_scores = {key: per_prompt(base, key) for key in ("present", "bound", "correct")}
    base_time = {r["prompt"]: r["seconds"] for r in base}
    table = {}
    for c in configs:
        cr = by_config[c.name]
        if not cr:
            continue
        entry = {"official": c.official, "images": len(cr), "prompts": len({r["prompt"] for r in cr})}
        for key in ("present", "bound", "correct"):
            scores = per_prompt(cr, key)
            entry[key] = bootstrap_ci(list(scores.values()), resamples=resamples)
            common = sorted(set(scores) & set(base_scores[key]))
            if c.name != "unguided" and common:
                entry[key + "_vs_unguided"] = paired_bootstrap_ci([scores[p] for p in common],
                                                                  [base_scores[key][p] for p in common],
                                                                  resamples=resamples)
        times = {r["prompt"]: r["seconds"] for r in cr}
        common = sorted(set(times) & set(base_time))
        if common:
            entry["time_ratio"] = sum(times[p] for p in common) / sum(base_time[p] for p in common)
        losses = [(np.mean(r["loss_first"]), np.mean(r["loss_last"])) for r in cr if r.get("loss_first")]
        if losses:
            entry["loss_first_last"] = [float(np.mean([a for a, _ in losses])), float(np.mean([b for _, b in losses]))]
        entry["halted_images"] = sum(sum(r.get("halted", [])) for r in cr)
        table[c.name] = entry
    return table


def markdown(table: dict, loc: dict | None, args) -> str:
    from stats import fmt_ci

    lines = [f"Toy benchmark: {args.n_two} two-object + {args.n_three} three-object held-out prompts × "
             f"{args.samples} samples, {args.steps} steps {args.sampler}/{args.scheduler}, CFG {args.cfg}, "
             f"{args.size} px, maps at level {args.level}. Scores in %, 95 % bootstrap interval over prompts; Δ = paired "
             "difference to unguided.", "",
             "| method | objects present | Δ | attributes bound | Δ | whole prompt | Δ | time × | loss first → last |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in table.items():
        def cell(key, e=e):
            return fmt_ci(*e[key]) if key in e else "–"
        loss = e.get("loss_first_last")
        lines.append(f"| {name} | {cell('present')} | {cell('present_vs_unguided')} | {cell('bound')} | "
                     f"{cell('bound_vs_unguided')} | {cell('correct')} | {cell('correct_vs_unguided')} | "
                     f"{e.get('time_ratio', 1.0):.2f} | "
                     f"{f'{loss[0]:.3f} → {loss[1]:.3f}' if loss else '–'} |")
    if loc:
        from toy_targets import localisation_table

        lines += ["", f"Localisation on ground-truth scenes (img2img at denoise {args.loc_denoise}), unguided: each "
                  "word's map renormalised over the prompt's words, thresholded at 0.4 × its maximum; IoU with its "
                  "object, and how often a noun's peak lies on its object.", ""] + localisation_table(loc)
    return "\n".join(lines) + "\n"


def grid_picture(path: Path, cells: dict, configs: list[Config], prompts, size: int) -> None:
    """rows = prompts, columns = configs; each cell: the first sample and, under it, its nouns' maps."""
    from PIL import Image, ImageDraw

    cols = [c.name for c in configs if c.official]
    rows = sorted({p for p, _ in cells})
    label_h, map_h = 14, size // 2
    cell_h = size + map_h
    canvas = Image.new("RGB", (len(cols) * size, label_h + len(rows) * (cell_h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(cols):
        draw.text((j * size + 2, 1), name[:20], fill=(0, 0, 0))
    for i, p in enumerate(rows):
        y0 = label_h + i * (cell_h + label_h)
        draw.text((2, y0 + 1), prompts[p].caption[:100], fill=(0, 0, 0))
        for j, name in enumerate(cols):
            if (p, name) not in cells:
                continue
            image, maps = cells[(p, name)]
            canvas.paste(Image.fromarray(image), (j * size, y0 + label_h))
            for k, m in enumerate(maps):
                w = size // max(len(maps), 1)
                m = (255 * (m - m.min()) / max(float(m.max() - m.min()), 1e-8)).astype(np.uint8)
                tile = Image.fromarray(m).resize((w, map_h), Image.NEAREST).convert("RGB")
                canvas.paste(tile, (j * size + k * w, y0 + label_h + size))
    canvas.save(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 two- + 6 three-object prompts × 2 samples, official "
                                                          "configurations, a smaller localisation check")
    ap.add_argument("--n-two", type=int, default=100)
    ap.add_argument("--n-three", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="normal")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--level", type=int, default=LEVEL, choices=(8, 16),
                    help="maps the methods read, as an image divisor: 16 = 8×8 (default, the workflows'), 8 = 16×16")
    ap.add_argument("--methods", default="", help="comma-separated config names (default: all)")
    ap.add_argument("--sweep", default="", help="strength factors, e.g. 0.25,0.5,2,4 (each method at ×factor)")
    ap.add_argument("--fast", action="store_true", help="also the gradient methods in fast mode")
    ap.add_argument("--loc-prompts", type=int, default=60, help="prompts for the localisation check (0: skip)")
    ap.add_argument("--loc-denoise", type=float, default=0.6)
    ap.add_argument("--grid-prompts", type=int, default=6)
    ap.add_argument("--ckpt", default=TOY_FILE)
    ap.add_argument("--prompt-seed", type=int, default=0, help="evaluation prompt set (0: the held-out set)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "out" / "toy_benchmark"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n_two, args.n_three, args.samples, args.loc_prompts, args.sweep = 12, 6, 2, 12, ""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from toy import scenes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = official_configs() + (fast_configs() if args.fast else []) + \
        (sweep_configs([float(f) for f in args.sweep.split(",")]) if args.sweep else [])
    if args.methods:
        wanted = args.methods.split(",")
        unknown = sorted(set(wanted) - {c.name for c in configs})
        if unknown:
            sys.exit(f"--methods: unknown {unknown}; known: {', '.join(c.name for c in configs)}")
        configs = [c for c in configs if c.name in wanted or c.name == "unguided"]
    toy = Toy(args)
    prompts = scenes.evaluation_prompts(n_two=args.n_two, n_three=args.n_three, seed=args.prompt_seed,
                                        split=toy.world.split)
    settings = {k: getattr(args, k) for k in ("samples", "steps", "cfg", "sampler", "scheduler", "size", "ckpt",
                                               "prompt_seed", "level")} | {"ckpt_sha256": toy.sha256}
    log_path = out / "images.jsonl"
    rows: list[dict] = []
    if log_path.exists():                                                   # resume: keep rows of these settings
        rows = [r for r in map(json.loads, log_path.read_text().splitlines()) if r.get("settings") == settings]
    done = {(r["prompt"], r["config"]) for r in rows}
    grid_cells: dict = {}
    total = len(prompts) * len(configs)
    t_start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        for i, prompt in enumerate(prompts):
            ta = positive = None
            for c in configs:
                wants_grid = i < args.grid_prompts and c.official
                if (i, c.name) in done and not wants_grid:
                    continue
                if ta is None:
                    ta, positive = toy.encode(prompt.caption)
                images, seconds, record, maps = toy.sample(c, prompt, ta, positive, seed=i)
                if wants_grid:
                    labels = [w.text for w in ta.words]
                    nouns = [ta.words[labels.index(m.shape)].positions[0] for m in prompt.mentions]
                    # Attention Modulation has no level input: its run records the model's default level
                    shown = None if maps is None else (args.level if args.level in maps.levels() else maps.levels()[0])
                    noun_maps = [] if maps is None else [maps.mean(shown)[0, p].numpy() for p in nouns]
                    grid_cells[(i, c.name)] = (images[0], noun_maps)
                if (i, c.name) in done:
                    continue
                for j, judged in enumerate(judge_images(images, prompt, args.size)):
                    row = {"settings": settings, "prompt": i, "caption": prompt.caption, "kind": prompt.kind,
                           "objects": len(prompt.mentions), "config": c.name, "sample": j, "seconds": seconds,
                           **judged, **loss_summary(record)}
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                log.flush()
                done.add((i, c.name))
                k = len(done)
                eta = (time.perf_counter() - t_start) / max(k, 1) * (total - k)
                print(f"[{k}/{total}] prompt {i} {c.name}: {seconds:.1f} s, correct "
                      f"{sum(r['correct'] for r in rows[-args.samples:])}/{args.samples}; ETA {eta / 60:.0f} min",
                      flush=True)
    loc = None
    if args.loc_prompts:
        from toy_targets import localisation

        loc = localisation(prompts[:args.loc_prompts], model=toy.model, vae=toy.vae,
                           capture=toy.node("AttentionAlignCaptureCrossAttention"), encode=toy.conditioning,
                           negative=toy.negative, config=toy.world, denoise=args.loc_denoise, seed=0)
    table = summarise(rows, configs)
    text = markdown(table, loc, args)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "table": table, "localisation": loc},
                                                 indent=1, default=str))
    if grid_cells:
        grid_picture(out / "grid.png", grid_cells, configs, prompts, args.size)
    print(text)


if __name__ == "__main__":
    main()
