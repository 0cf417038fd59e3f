"""Run a UI-format workflow from example_workflows/ headless (in-process ComfyUI on the CPU) and collect its images.

    .venv/bin/python scripts/run_workflow.py example_workflows/capture_and_visualise_sd15.json --tiny --out out/

--tiny swaps every checkpoint for the random-weight tiny SD1.5-family model (built on first use, no download), also
in the SDXL workflows (their graphs are the same; the SDXL family is tested on its own tiny model by
tests/test_host_families.py, whose full-size CLIP-G takes minutes to build), and shrinks the latent (--size, default 128 px), so any workflow runs in seconds; without it the workflow's own
checkpoints must be in <out>/base/models/checkpoints. For the Flux and SD3.5 workflows --tiny puts a tiny
random-weight DiT of the family (scripts/tiny_dit.py) in place of their loaders. The saved PNGs are copied to <out>/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from headless import ComfyHost, require_comfyui, ui_to_api, widget_slots

TINY = "tiny_sd15.safetensors"


def tiny_workflow(workflow: dict, host: ComfyHost, size: int = 128, steps: int | None = None,
                  ckpt: str = TINY) -> dict:
    """A copy of a UI-format workflow that runs on the tiny model: every checkpoint loader set to ``ckpt``, every
    empty latent ``size`` px, and (when given) every ``steps`` widget set to ``steps``. The copy is what gets
    embedded in the saved PNGs, so dropping one on ComfyUI loads the graph that made it."""
    wf = json.loads(json.dumps(workflow))
    for node in wf["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        values = node.get("widgets_values") or []
        slots, _ = widget_slots(host, node["type"])
        if node["type"] == "CheckpointLoaderSimple":
            values[slots["ckpt_name"]] = ckpt
        if node["type"] == "EmptyLatentImage":
            values[slots["width"]] = values[slots["height"]] = size
        if steps is not None and "steps" in slots and not _linked(node, "steps"):
            values[slots["steps"]] = steps
    return wf


class ProgressPrinter:
    """Prints what a headless run is doing: each node as it starts and its progress bar in steps of 10 %, so a long
    run (the methods' refinement loops) is never silent. Hooks ComfyUI's progress bar and execution events."""

    def __init__(self, host: ComfyHost, out=None):
        import comfy.utils

        self.host, self.out, self.prompt, self.last = host, out or sys.stdout, {}, {}
        self.events: list[tuple[str, int, int]] = []          # (node id, value, total) as reported
        comfy.utils.set_progress_bar_global_hook(self.progress)
        host.executor.server.listener = self.executing

    def close(self) -> None:
        """Unhook from ComfyUI (progress bar hook and execution events)."""
        import comfy.utils

        comfy.utils.set_progress_bar_global_hook(None)
        self.host.executor.server.listener = None

    def start(self, prompt: dict) -> None:
        self.prompt, self.last, self.events = prompt, {}, []

    def _name(self, node_id) -> str:
        import nodes as comfy_nodes

        kind = self.prompt.get(str(node_id), {}).get("class_type", "?")
        return f"node {node_id} ({comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(kind, kind)})"

    def executing(self, event: str, data: dict) -> None:
        if event == "executing" and data.get("node") is not None:
            print(f"  {self._name(data['node'])} …", file=self.out, flush=True)

    def progress(self, value, total, preview=None, node_id=None) -> None:
        from comfy_execution.utils import get_executing_context

        if node_id is None:
            context = get_executing_context()
            node_id = context.node_id if context is not None else "?"
        self.events.append((str(node_id), int(value), int(total)))
        tenth = int(10 * value / max(total, 1))
        if self.last.get(node_id) != tenth:
            self.last[node_id] = tenth
            print(f"    {self._name(node_id)}: {value}/{total} ({100 * value / max(total, 1):.0f} %)", file=self.out,
                  flush=True)


def _linked(node: dict, name: str) -> bool:
    return any(slot.get("name") == name and slot.get("link") is not None for slot in node.get("inputs", []))


def dit_family(workflow: dict) -> str | None:
    """``flux`` or ``sd35`` for a UI-format workflow that loads a DiT (its CLIP loader says which), else None."""
    types = {n["type"] for n in workflow.get("nodes", [])}
    if "DualCLIPLoader" in types:
        return "flux"
    if "TripleCLIPLoader" in types:
        return "sd35"
    return None


def tiny_prompt(workflow: dict, host: ComfyHost, size: int = 128, steps: int | None = None,
                ckpt: str = TINY) -> tuple[dict, dict]:
    """``(ui, API prompt)`` of a UI-format workflow set to run on tiny random-weight models: the tiny SD1.5-family
    checkpoint (:func:`tiny_workflow`), or for a Flux / SD3.5 workflow the tiny DiT of its family in place of its
    loaders (``scripts/tiny_dit.py``, whose development loader is registered with ``host``)."""
    family = dit_family(workflow)
    if family is None:
        ui = tiny_workflow(workflow, host, size, steps, ckpt=ckpt)
        return ui, ui_to_api(ui, host)
    import tiny_dit

    tiny_dit.register(host)
    return workflow, tiny_dit.on_tiny_dit(ui_to_api(workflow, host), family, size=size, steps=steps)


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

    comfy = require_comfyui()
    out = Path(a.out).resolve()
    host = ComfyHost(comfy, out / "base")
    if a.tiny and not host.checkpoint_path(TINY).exists():
        import tiny_checkpoint

        print(f"building the tiny checkpoint {TINY} …", flush=True)
        tiny_checkpoint.build(str(host.checkpoint_path(TINY)))
    printer = ProgressPrinter(host)
    for n, wf in enumerate(a.workflow, 1):
        ui = json.loads(Path(wf).read_text())
        ui, prompt = tiny_prompt(ui, host, a.size, a.steps) if a.tiny else (ui, ui_to_api(ui, host))
        if a.api_out:
            Path(a.api_out).mkdir(parents=True, exist_ok=True)
            (Path(a.api_out) / f"{Path(wf).stem}_api.json").write_text(json.dumps(prompt, indent=1) + "\n")
        print(f"[{n}/{len(a.workflow)}] {wf} …", flush=True)
        t0 = time.time()
        printer.start(prompt)
        host.run(prompt, workflow=ui)
        saved = []
        for ui in host.ui_outputs.values():
            for img in ui.get("images", []):
                if img.get("type") != "output":
                    continue
                src = out / "base" / "output" / img["subfolder"] / img["filename"]
                dst = out / f"{Path(wf).stem}__{img['filename']}"
                shutil.copyfile(src, dst)
                saved.append(dst)
        print(f"[{n}/{len(a.workflow)}] {wf}: ran in {time.time() - t0:.1f} s; wrote " + ", ".join(str(p) for p in saved))
        for node_id, ui in host.ui_outputs.items():
            for text in ui.get("text", []):
                print(f"  node {node_id} ({prompt[node_id]['class_type']}) shows:\n    " + text.replace("\n", "\n    "))


if __name__ == "__main__":
    main()
