"""Render the pictures the pack ships from real runs of its example workflows: one command.

    .venv/bin/python scripts/render_pictures.py                     # toy workflows on the toy model (default)

* ``example_workflows/<name>.jpg``: each workflow's thumbnail for ComfyUI's template browser (it asks for the
  same-name .jpg): the workflow's Visualize Attention grid (heat maps over the decoded image, T and S, the loss
  plot), fitted into a 512 px square.
* ``web/docs/img/<node id>.png``: the picture on each node's help page (``web/docs/<node id>.md``).

Every workflow runs headless (in-process ComfyUI on the CPU). The ``_toy`` workflows run as they are, on the pack's
toy model; the SD1.5 and SDXL ones need checkpoints no CI machine has, so they run on the tiny random-weight model
(``--ckpt`` another file) at ``--size`` px and ``--steps`` steps, and the Flux / SD3.5 ones on tiny random-weight
DiTs (``scripts/tiny_dit.py``): their thumbnails show noise, by design. The help pages' pictures come from the toy
runs. ``--only NAME …`` renders just those workflows' thumbnails and the help pictures taken from them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from headless import REPO_ROOT, ComfyHost, pack, require_comfyui, ui_to_api
from run_workflow import TINY, tiny_prompt

THUMB = 512
DOC_WIDTH = 768
#: node id → (workflow whose run pictures it, what to take: 'maps' = the Visualize grid, 'T' = the T image,
#: 'text' = the node's shown text, 'report' = the Attention Report), from the pack's registry
DOC_PICTURES = {node.node_id: node.picture for node in pack("nodes.registry").NODES}


def _images(host: ComfyHost, prompt: dict, ui_outputs: dict) -> dict:
    """'maps' (the Visualize grid a SaveImage saved), 'T' (the previewed T image) and 'text' (Show Tokens)."""
    from PIL import Image

    found = {}
    for node_id, out in ui_outputs.items():
        node = prompt[node_id]
        for img in out.get("images", []):
            path = Path(host.base_dir) / img["type"] / img["subfolder"] / img["filename"]
            src = node["inputs"].get("images")
            src_type = prompt[src[0]]["class_type"] if isinstance(src, list) else ""
            if src_type == "AttentionAlignVisualize":
                found["maps"] = Image.open(path).convert("RGB")
            elif src_type == "AttentionAlignTextSelfAttention":
                found["T"] = Image.open(path).convert("RGB")
        if node["class_type"] == "AttentionAlignShowTokens" and out.get("text"):
            found["text"] = text_picture("\n".join(out["text"]))
        if node["class_type"] == "AttentionAlignReport" and out.get("text"):
            found["report"] = text_picture(_pretty("".join(out["text"])))
    return found


def _pretty(report_json: str) -> str:
    """The report's JSON, one key per line, lists on one line (as it reads in the node's text box)."""
    data = json.loads(report_json)
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in data.items() if k not in ("loss_per_step",))


def with_report(prompt: dict) -> dict:
    """``prompt`` plus an Attention Report of its Guided KSampler's maps and log (for the report's help picture)."""
    sampler = next((nid for nid, n in prompt.items() if n["class_type"] == "AttentionAlignGuidedKSampler"), None)
    text = next((nid for nid, n in prompt.items() if n["class_type"] == "AttentionAlignTextSelfAttention"), None)
    if sampler is None or text is None:
        return prompt
    return {**prompt, "report": {"class_type": "AttentionAlignReport", "inputs": {
        "text_attention": [text, 0], "attention_maps": [sampler, 1], "guidance_log": [sampler, 2], "subjects": "",
        "groups": "", "parser": "builtin", "level": 0}}}


def text_picture(text: str):
    """The text a node shows, drawn as it reads on the node (light on the frontend's dark grey)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSansMono.ttf", 14)
    except OSError:
        font = ImageFont.load_default()
    lines = text.splitlines() or [""]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(int(probe.textlength(line, font=font)) for line in lines) + 24
    img = Image.new("RGB", (min(max(width, 200), DOC_WIDTH), 18 * len(lines) + 24), (34, 34, 34))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((12, 12 + 18 * i), line, fill=(221, 221, 221), font=font)
    return img


def thumbnail(img):
    """``img`` fitted (whole, never cropped) into a THUMB px square on the frontend's dark background."""
    from PIL import Image

    scale = THUMB / max(img.size)
    fitted = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    square = Image.new("RGB", (THUMB, THUMB), (32, 32, 32))
    square.paste(fitted, ((THUMB - fitted.width) // 2, (THUMB - fitted.height) // 2))
    return square


def doc_picture(img):
    from PIL import Image

    if img.width <= DOC_WIDTH:
        return img
    return img.resize((DOC_WIDTH, round(img.height * DOC_WIDTH / img.width)), Image.LANCZOS)


def main() -> None:
    import build_workflows
    import pack_assets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint file to run on (default: the tiny random-weight model)")
    ap.add_argument("--size", type=int, default=160, help="image size in px (default 160)")
    ap.add_argument("--steps", type=int, default=10, help="sampler steps (default 10)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="render only these workflows (file names in example_workflows/) and their help pictures")
    a = ap.parse_args()
    unknown = sorted(set(a.only or ()) - set(build_workflows.WORKFLOWS))
    if unknown:
        sys.exit(f"--only: {', '.join(unknown)} not among the workflows: {', '.join(sorted(build_workflows.WORKFLOWS))}")

    comfy = require_comfyui()
    host = ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_pictures_")))
    if a.ckpt:
        ckpt = Path(a.ckpt).name
        shutil.copyfile(a.ckpt, host.checkpoint_path(ckpt))
    else:
        import tiny_checkpoint

        ckpt = TINY
        tiny_checkpoint.build(str(host.checkpoint_path(ckpt)), layout="tiny", fp16=True, seed=0)
    taken: dict[str, dict] = {}
    for name in a.only or build_workflows.WORKFLOWS:
        stem = Path(name).stem
        path = REPO_ROOT / "example_workflows" / name
        ui = json.loads(path.read_text())
        family = build_workflows.WORKFLOWS[name][1]
        ui, prompt = (ui, ui_to_api(ui, host)) if stem.endswith("_toy") else \
            tiny_prompt(ui, host, a.size, a.steps, ckpt=ckpt)
        if stem == "attend_and_excite_toy":
            prompt = with_report(prompt)
        where = "the toy model" if stem.endswith("_toy") else f"a tiny {family}" if family in build_workflows.DIT else ckpt
        print(f"running {name} on {where} …", flush=True)
        host.run(prompt, fresh=True, workflow=ui)
        taken[stem] = _images(host, prompt, host.ui_outputs)
        if "maps" not in taken[stem]:
            sys.exit(f"{name}: no Visualize Attention grid was saved")
        thumb = path.with_suffix(".jpg")
        thumbnail(taken[stem]["maps"]).save(thumb, "JPEG", quality=85, optimize=True)
        print("wrote", thumb.relative_to(REPO_ROOT), pack_assets.check_thumbnail(thumb))
    img_dir = REPO_ROOT / "web" / "docs" / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    for node_id, (stem, what) in DOC_PICTURES.items():
        if stem not in taken:                   # --only: the pictures of the workflows rendered
            continue
        out = img_dir / f"{node_id}.png"
        doc_picture(taken[stem][what]).save(out, optimize=True)
        print("wrote", out.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
