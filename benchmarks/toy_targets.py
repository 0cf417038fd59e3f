"""Is a toy model a fair stand-in for SD? The unguided model against the targets a method needs, measured in ComfyUI.

    .venv/bin/python benchmarks/toy_targets.py --ckpt out/toy_v2/toy_shapes.safetensors --set tuning --out out/t
    .venv/bin/python benchmarks/toy_targets.py --set evaluation --samples 4 --seed 100 --out out/targets

One process, ComfyUI's own nodes (Load Toy Model, CLIP Text Encode as the toy's CLIP does it, the stock KSampler,
Capture Cross-Attention, VAE Encode/Decode), the exact judge (``toy.judge``). Measures, on the unguided model:

* **one object**: every colour × shape ("a red circle", 42 prompts) × ``--samples``: drawn right = the judge finds
  exactly one object, of that shape and colour.
* **two / three objects**: held-out prompts of the model's split (``--set tuning``: combinations the evaluation set
  never uses, for choosing settings; ``--set evaluation``: the benchmark's set) × ``--samples``: objects present,
  attributes bound, whole prompt right (every object, right colours, nothing extra).
* **localisation**: for each multi-object prompt a ground-truth scene of its objects is rendered, encoded and
  re-noised (img2img, ``--loc-denoise``) while Capture Cross-Attention records. Each word's map is renormalised over
  the prompt's words (start, end and padding dropped: ``A_w / Σ_words A``), upsampled to the image, thresholded at
  0.4 × its maximum and compared with its object (coverage > 0.5): IoU, and whether its peak is on the object
  (nouns), at each level the model has. Beside them: the share of cross-attention on the start token, the end token,
  the padding and the words (softmax over all 77), and the IoU of a map covering everything (chance).
* **VAE round trips**: the judge on random scenes after VAE Encode → Decode.

Samples use noise seed ``--seed + prompt index``; 20 steps euler, CFG 5 (the toy benchmark's settings).
Writes ``summary.json`` and ``summary.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

END_TOKEN = 49407


def one_object_prompts():
    from toy.scenes import COLOURS, SHAPES, Mention, Prompt, mention_text

    return [Prompt(mentions=(Mention(s, c),), caption=mention_text(Mention(s, c), form="adjective"), kind="one")
            for c in COLOURS for s in SHAPES]


class Host:
    """An in-process ComfyUI with the candidate file linked into its checkpoints."""

    def __init__(self, ckpt: Path, *, gpu: bool):
        import headless

        comfy = headless.require_comfyui()
        self.host = headless.ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_targets_")), cpu=not gpu)
        link = self.host.checkpoint_path("candidate.safetensors")
        link.symlink_to(Path(ckpt).resolve())
        node = self.host.node_class
        self.model, self.clip, self.vae = node("AttentionAlignLoadToyModel").execute("candidate.safetensors").args
        self.capture = node("AttentionAlignCaptureCrossAttention")
        self.negative = self.encode("")

    def encode(self, caption: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(caption))

    def sample(self, caption: str, *, seed: int, count: int, steps: int, cfg: float):
        import nodes as comfy_nodes
        import torch

        latent = {"samples": torch.zeros(count, 4, 16, 16)}
        (out,) = comfy_nodes.common_ksampler(self.model, seed, steps, cfg, "euler", "normal", self.encode(caption),
                                             self.negative, latent)
        images = self.vae.decode(out["samples"])
        return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def judge_rows(images, prompt) -> list[dict]:
    from toy import judge

    rows = []
    for img in images:
        s = judge.score(judge.detect(img, image_size=img.shape[0]), prompt)
        rows.append({"present": float(np.mean(s.present)), "bound": float(np.mean(s.bound)),
                     "correct": bool(s.correct)})
    return rows


def localisation(prompts, *, model, vae, capture, encode, negative, config, denoise: float, seed: int) -> dict:
    """Renormalised word maps against true objects (module docstring; the measure is ``toy.judge.word_map_scores``):
    ``{level: {measure: mean over prompts}}``. ``model``, ``vae``: the loaded toy model's; ``capture``: the Capture
    Cross-Attention node; ``encode(caption)``: a conditioning; ``config``: the model's scenes."""
    import nodes as comfy_nodes
    import torch

    from toy import model as tm
    from toy import scenes
    from toy.judge import word_map_scores
    from toy.train_v2 import word_ids

    tok = tm.tokenizer()
    word_id = word_ids(tok)
    size = config.image_size
    res: dict = {}
    for k, prompt in enumerate(prompts):
        rng = np.random.default_rng([seed, 77, k])
        objs = scenes.place_objects(rng, [m.shape for m in prompt.mentions], [m.colour for m in prompt.mentions],
                                    config=config)
        image = torch.from_numpy(scenes.render_array(scenes.Scene(objects=objs, image_size=size))).float()[None] / 255
        latent = {"samples": vae.encode(image)}
        captured, board = capture.execute(model, 0, False).args
        comfy_nodes.common_ksampler(captured, seed + k, 10, 5.0, "euler", "normal", encode(prompt.caption),
                                    negative, latent, denoise=denoise)
        record = board.records[-1]
        ids = tm.token_ids(tok, prompt.caption)
        words = []
        for m, o in zip(prompt.mentions, objs):
            mask = scenes.coverage(o, image_size=size) > 0.5
            words += [(role, ids.index(word_id[w]), mask) for role, w in (("noun", m.shape), ("colour", m.colour))
                      if w is not None]
        for level in record.levels():
            scores = word_map_scores(record.mean(level)[0], end=ids.index(END_TOKEN), words=words)
            for key, values in scores.items():
                res.setdefault(level, {}).setdefault(key, []).extend(values)
    return {lv: {k: float(np.mean(v)) for k, v in d.items()} for lv, d in res.items()}


def localisation_table(loc: dict) -> list[str]:
    """:func:`localisation`'s result as a markdown table, one row per level."""
    lines = ["| level | noun IoU | noun peak on object | colour-word IoU | IoU of a map covering everything | "
             "attention on start / end / padding / words |", "|---|---|---|---|---|---|"]
    for lv, d in sorted(loc.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {lv} | {d['noun_iou']:.3f} | {100 * d['noun_peak_on_object']:.0f} % | {d['colour_iou']:.3f} "
                     f"| {d['flat_iou']:.3f} | {d['mass_start']:.2f} / {d['mass_end']:.2f} / "
                     f"{d['mass_padding']:.2f} / {d['mass_words']:.2f} |")
    return lines


def round_trips(h: Host, *, cfg, count: int, seed: int) -> dict:
    """:func:`toy.judge.round_trip_accuracy` through ComfyUI's VAE Encode → Decode of the loaded toy VAE."""
    import torch

    from toy.judge import round_trip_accuracy

    def round_trip(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).float()[None] / 255
        return (h.vae.decode(h.vae.encode(x)).clamp(0, 1) * 255).round().to(torch.uint8)[0].cpu().numpy()

    return round_trip_accuracy(round_trip, config=cfg, count=count, seed=seed)


def markdown(r: dict) -> str:
    lines = [f"# Toy model targets: `{r['ckpt']}`", "",
             f"set `{r['set']}`, {r['samples']} samples per prompt, noise seeds from {r['seed']}, "
             f"{r['seconds']:.0f} s", "",
             "| measure | value | target |", "|---|---|---|",
             f"| one object drawn right ({r['one']['prompts']} prompts) | {100 * r['one']['correct']:.1f} % | ≥ 95 % |"]
    for n in ("two", "three"):
        m = r[n]
        lines.append(f"| {n} objects ({m['prompts']} prompts): present / bound / whole prompt | "
                     f"{100 * m['present']:.1f} / {100 * m['bound']:.1f} / {100 * m['correct']:.1f} % | "
                     + ("whole 20–70 %" if n == "two" else "reported") + " |")
    v = r["vae"]
    lines.append(f"| VAE round trips ({v['scenes']} scenes): objects / scenes right | {100 * v['objects_right']:.1f} / "
                 f"{100 * v['scenes_right']:.1f} % | – |")
    lines += ["", "Word maps on ground-truth scenes (targets: noun IoU ≥ 0.5 and peak on the object ≥ 90 % at the level "
              "the workflows read, colour-word IoU ≥ 0.4):", ""] + localisation_table(r["localisation"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=str(ROOT / "toy" / "weights" / "toy_shapes.safetensors"))
    ap.add_argument("--set", choices=("tuning", "evaluation"), default="tuning")
    ap.add_argument("--split", choices=("auto", "v1", "v2"), default="auto",
                    help="the model's world: v1 (toy.train) or v2 (toy.train_v2); auto: the trainer the file names")
    ap.add_argument("--n-two", type=int, default=40)
    ap.add_argument("--n-three", type=int, default=20)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--loc-prompts", type=int, default=30)
    ap.add_argument("--loc-denoise", type=float, default=0.6)
    ap.add_argument("--round-trips", type=int, default=30)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "out" / "toy_targets"))
    args = ap.parse_args(argv)
    from toy import scenes
    from toy.model import world_of

    if args.split == "auto":
        args.split = world_of(args.ckpt, input_name="--ckpt")
    world = scenes.WORLDS[args.split]                           # the model's own scenes, and through them its split
    split = world.split
    pick = scenes.tuning_prompts if args.set == "tuning" else scenes.evaluation_prompts
    multi = pick(n_two=args.n_two, n_three=args.n_three, split=split)
    t0 = time.time()
    h = Host(Path(args.ckpt), gpu=args.gpu)
    result: dict = {"ckpt": str(args.ckpt), "split": args.split, "set": args.set, "samples": args.samples, "seed": args.seed}
    rows = {"one": [], "two": [], "three": []}
    for i, prompt in enumerate(one_object_prompts() + multi):
        kind = {1: "one", 2: "two", 3: "three"}[len(prompt.mentions)]
        images = h.sample(prompt.caption, seed=args.seed + i, count=args.samples, steps=args.steps, cfg=args.cfg)
        rows[kind] += judge_rows(images, prompt)
    for kind, rs in rows.items():
        result[kind] = {"prompts": len(rs) // args.samples, **{k: float(np.mean([r[k] for r in rs]))
                                                               for k in ("present", "bound", "correct")}}
    loc_prompts = [p for p in multi if len(p.mentions) == 2][:args.loc_prompts]
    result["localisation"] = localisation(loc_prompts, model=h.model, vae=h.vae, capture=h.capture, encode=h.encode,
                                          negative=h.negative, config=world, denoise=args.loc_denoise, seed=args.seed)
    result["vae"] = round_trips(h, cfg=world, count=args.round_trips, seed=args.seed)
    result["seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    (out / "summary.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
