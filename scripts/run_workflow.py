"""Run a UI-format workflow from workflows/ headless (in-process ComfyUI on the CPU) and collect its images.

    .venv/bin/python scripts/run_workflow.py workflows/capture_and_visualise_sd15.json --tiny --out out/

--tiny swaps every checkpoint for the random-weight tiny SD1.5-family model (built on first use, no download) and
shrinks the latent (--size, default 128 px), so any workflow runs in seconds; without it the workflow's own
checkpoints must be in <out>/base/models/checkpoints. The saved PNGs are copied to <out>/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from headless import ComfyHost, find_comfyui, ui_to_api

TINY = "tiny_sd15.safetensors"


def apply_tiny(prompt: dict, size: int, steps: int | None) -> None:
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = TINY
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
        if steps is not None and "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workflow", nargs="+", help="UI-format workflow JSON file(s)")
    ap.add_argument("--out", default="out", help="where the PNGs go (default: out/)")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random-weight model instead of real checkpoints")
    ap.add_argument("--size", type=int, default=128, help="image size in px with --tiny (default 128)")
    ap.add_argument("--steps", type=int, default=None, help="override every sampler's step count")
    ap.add_argument("--api-out", default=None, help="also write each workflow's API-format prompt (what POST /prompt "
                                                    "takes) into this folder")
    a = ap.parse_args()

    comfy = find_comfyui()
    if comfy is None:
        sys.exit("no ComfyUI checkout found: set COMFYUI_PATH or clone ComfyUI to ~/ComfyUI")
    out = Path(a.out).resolve()
    host = ComfyHost(comfy, out / "base")
    if a.tiny and not host.checkpoint_path(TINY).exists():
        import tiny_checkpoint

        print(f"building the tiny checkpoint {TINY} …", flush=True)
        tiny_checkpoint.build(str(host.checkpoint_path(TINY)))
    for wf in a.workflow:
        prompt = ui_to_api(json.loads(Path(wf).read_text()), host)
        if a.tiny:
            apply_tiny(prompt, a.size, a.steps)
        if a.api_out:
            Path(a.api_out).mkdir(parents=True, exist_ok=True)
            (Path(a.api_out) / f"{Path(wf).stem}_api.json").write_text(json.dumps(prompt, indent=1) + "\n")
        t0 = time.time()
        host.run(prompt)
        saved = []
        for ui in host.ui_outputs.values():
            for img in ui.get("images", []):
                if img.get("type") != "output":
                    continue
                src = out / "base" / "output" / img["subfolder"] / img["filename"]
                dst = out / f"{Path(wf).stem}__{img['filename']}"
                shutil.copyfile(src, dst)
                saved.append(dst)
        print(f"{wf}: ran in {time.time() - t0:.1f} s; wrote " + ", ".join(str(p) for p in saved))
        for node_id, ui in host.ui_outputs.items():
            for text in ui.get("text", []):
                print(f"  node {node_id} ({prompt[node_id]['class_type']}) shows:\n    " + text.replace("\n", "\n    "))


if __name__ == "__main__":
    main()
