"""Write the UI-format workflows in example_workflows/ from their API-format definitions below.

The UI format (what ComfyUI's frontend saves and loads) stores widget values by position, in the order of each
node's schema; generating it from the live node definitions keeps the files in step with the nodes. Run after
changing a node's inputs:  .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from headless import REPO_ROOT, ComfyHost, api_to_ui, pack, require_comfyui

REGISTRY = pack("nodes.registry")

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
#: checkpoint and image size per model family; the graphs are the same (ComfyUI's CLIP Text Encode and the pack's
#: nodes read SD1.x and SDXL alike, and level 32 is the papers' level at both sizes: 16×16 / 32×32 maps)
FAMILIES = {"sd15": {"ckpt": SD15, "size": 512, "name": "SD1.5"},
            "sdxl": {"ckpt": SDXL, "size": 1024, "name": "SDXL"},
            "toy": {"ckpt": "attention-align/toy_shapes.safetensors", "size": 128, "name": "the toy model"}}
#: the toy model's version of each graph (its vocabulary: 6 shapes × 7 colours): prompt, and the words typed into the
#: method node (the methods' own from the registry); chosen when the graphs were written, before any result was seen.
#: SynGen's holds two colour-shape pairs the model never saw in training (white circle, red square).
TOY = {"capture_and_visualise": ("a red circle and a blue square", {}),
       **{m.graph: (m.example.toy[0], {m.word_input: m.example.toy[1]} if m.word_input and m.example.toy[1] else {})
          for m in REGISTRY.METHODS if m.unet}}
TOY_LEVEL, TOY_STEPS = 16, 20
#: DiT families: loaded from their separate files (diffusion model, text encoders, VAE), as ComfyUI's own examples do
DIT = {"flux": {"ckpt": "flux1-dev.safetensors", "size": 1024, "name": "Flux-dev", "steps": 20, "cfg": 1.0,
                "sampler": "euler", "scheduler": "simple",
                "files": "UNET Loader: flux1-dev.safetensors (or schnell, or a Flux fine-tune) in "
                         "ComfyUI/models/diffusion_models. DualCLIPLoader (type flux): clip_l.safetensors and "
                         "t5xxl_fp16.safetensors in models/text_encoders. Load VAE: ae.safetensors in models/vae."},
       "sd35": {"ckpt": "sd3.5_medium.safetensors", "size": 1024, "name": "SD3.5-medium", "steps": 40, "cfg": 4.5,
                "sampler": "euler", "scheduler": "sgm_uniform",
                "files": "Load Checkpoint: sd3.5_medium.safetensors (or SD3.5-large, SD3-medium) in "
                         "ComfyUI/models/checkpoints (its model and VAE). TripleCLIPLoader: clip_l.safetensors, "
                         "clip_g.safetensors and t5xxl_fp16.safetensors in models/text_encoders."}}

#: node body heights (title bar excluded) as frontend 1.27.10 draws these nodes; a node is never drawn smaller than
#: its widgets need, so a saved size below this would make nodes overlap on the canvas (tests/test_browser.py checks)
HEIGHT = {"UNETLoader": 110, "DualCLIPLoader": 160, "TripleCLIPLoader": 135, "VAELoader": 85, "FluxGuidance": 85,
          "EmptySD3LatentImage": 135, "CheckpointLoaderSimple": 160, "CLIPTextEncode": 160, "EmptyLatentImage": 160,
          "KSampler": 262, "VAEDecode": 160, "SaveImage": 300, "PreviewImage": 300, "Note": 330,
          **{node.node_id: node.height for node in REGISTRY.NODES}}
TITLE_H, GAP_X, GAP_Y, MARGIN = 30, 60, 40, 40
#: the view the frontend opens the workflows with: text is drawn from about 57 % zoom (LiteGraph's low-quality
#: threshold at 1× pixel ratio); 75 % keeps widget text legible on a laptop screen
VIEW_SCALE = 0.75


def node_width(title: str) -> int:
    """Wide enough for the title beside the node-source badge (about 7 px per character at the title font)."""
    return max(320, 7 * len(title) + 140)


def layout(prompt: dict, host: ComfyHost, columns: list[list[str]]) -> tuple[dict, dict, dict]:
    """Positions, sizes and the opening view for nodes arranged in ``columns`` (left to right, top to bottom)."""
    import nodes as comfy_nodes

    positions, sizes, x = {}, {}, MARGIN
    for column in columns:
        titles = {nid: comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(prompt[nid]["class_type"], prompt[nid]["class_type"])
                  for nid in column}
        width, y = max(node_width(t) for t in titles.values()), MARGIN + TITLE_H
        for nid in column:
            height = HEIGHT.get(prompt[nid]["class_type"], 200)
            positions[nid], sizes[nid] = (x, y), (width, height)
            y += height + TITLE_H + GAP_Y
        x += width + GAP_X
    missing = set(prompt) - set(positions)
    if missing:
        raise ValueError(f"layout: nodes {sorted(missing)} have no column")
    # the graph's top-left corner (MARGIN, MARGIN) just below the frontend's menu and tabs, right of its sidebar
    view = {"scale": VIEW_SCALE, "offset": [60 / VIEW_SCALE - MARGIN, 100 / VIEW_SCALE - MARGIN]}
    return positions, sizes, view


def capture_and_visualise() -> tuple[dict, list[list[str]]]:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["1", 1], "text": "a red car and a blue bench", "encoder": "auto", "gamma": 3.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry, low quality"}},
        "4": {"class_type": "AttentionAlignCaptureCrossAttention",
              "inputs": {"model": ["1", 0], "levels": 0, "record_steps": False}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 4913, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["4", 1], "text_attention": ["2", 0], "image": ["7", 0], "words": "", "level": 0,
            "columns": 4}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "attention_align/maps"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "attention_align/image"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    return prompt, [["1", "5"], ["2", "3", "4"], ["6", "11"], ["7", "10"], ["8", "9"]]


def capture_and_visualise_dit(family: str, method: dict | None = None, text: str | None = None,
                              plot: bool = False) -> tuple[dict, list[list[str]]]:
    """Capture and visualise on a DiT: its loaders, Text Self-Attention reading T5, the stock KSampler; with a
    ``method`` node, its GUIDANCE applied to the model (Apply Guidance) before the capture."""
    d = DIT[family]
    if family == "flux":
        loaders = {
            "1": {"class_type": "UNETLoader", "inputs": {"unet_name": d["ckpt"], "weight_dtype": "default"}},
            "12": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                              "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                                                              "device": "default"}},
            "13": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        }
        model, clip, vae = ["1", 0], ["12", 0], ["13", 0]
    else:
        loaders = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": d["ckpt"]}},
            "12": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                "clip_name2": "clip_g.safetensors",
                                                                "clip_name3": "t5xxl_fp16.safetensors"}},
        }
        model, clip, vae = ["1", 0], ["12", 0], ["1", 2]
    prompt, _ = capture_and_visualise()                 # the SD1.5 graph, with the family's loaders and settings
    del prompt["1"]
    prompt.update(loaders)
    prompt["2"]["inputs"]["clip"], prompt["3"]["inputs"] = clip, {"clip": clip, "text": ""}
    prompt["4"]["inputs"]["model"], prompt["7"]["inputs"]["vae"] = model, vae
    prompt["5"] = {"class_type": "EmptySD3LatentImage",
                   "inputs": {"width": d["size"], "height": d["size"], "batch_size": 1}}
    prompt["6"]["inputs"].update(steps=d["steps"], cfg=d["cfg"], sampler_name=d["sampler"], scheduler=d["scheduler"])
    first = ["1", "12"] + (["13"] if "13" in prompt else []) + ["5"]
    if text is not None:
        prompt["2"]["inputs"]["text"] = text
    if method is not None:                   # method → Apply Guidance → Capture: the stock KSampler applies it
        prompt["15"], prompt["16"] = method, {"class_type": "AttentionAlignApplyGuidance",
                                              "inputs": {"model": model, "guidance": ["15", 0]}}
        prompt["4"]["inputs"]["model"] = ["16", 0]
        if plot:                             # the loss per step beside the maps
            prompt["8"]["inputs"]["guidance_log"] = ["16", 1]
        first = first + ["15", "16"]
    if family == "flux":                     # Flux-dev is guidance-distilled: cfg 1, the guidance goes in the prompt
        prompt["14"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 2], "guidance": 3.5}}
        prompt["6"]["inputs"]["positive"] = ["14", 0]
        return prompt, [first, ["2", "3", "4"], ["14", "6", "11"], ["7", "10"], ["8", "9"]]
    return prompt, [first, ["2", "3", "4"], ["6", "11"], ["7", "10"], ["8", "9"]]


def _head(prompt_text: str) -> dict:
    """Checkpoint, Text Self-Attention (the positive prompt) and an empty negative: nodes 1–3 of the method graphs."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["1", 1], "text": prompt_text, "encoder": "auto", "gamma": 3.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
    }


def _guided(prompt_text: str, seed: int, method: dict, prefix: str,
            show_tokens: bool = True) -> tuple[dict, list[list[str]]]:
    """Checkpoint → Text Self-Attention → method node → Guided KSampler → decode/save, + maps, [+ Show Tokens]."""
    prompt = {
        **_head(prompt_text),
        "4": method,
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": 50, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "ddim_uniform", "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["5", 0],
            "denoise": 1.0, "guidance": ["4", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"attention_align/{prefix}"}},
        "9": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["6", 1], "text_attention": ["2", 0], "image": ["7", 0], "guidance_log": ["6", 2],
            "words": "", "level": 32, "columns": 4}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0],
                                                     "filename_prefix": f"attention_align/{prefix}_maps"}},
        "11": {"class_type": "AttentionAlignShowTokens", "inputs": {
            "text_attention": ["2", 0], "subjects": method["inputs"].get("subjects", ""),
            "groups": method["inputs"].get("groups", ""), "parser": "builtin"}},
    }
    columns = [["1"], ["2", "3", "5"], ["4", "6"], ["11", "7", "8"], ["9", "10"]]
    if not show_tokens:
        del prompt["11"]
        columns[3].remove("11")
    return prompt, columns


def method_node(host: ComfyHost, m) -> dict:
    """The method's node at its official configuration (its schema's defaults: every widget written out, so that
    the family and toy variants can set the level), with the example's words and settings."""
    inputs = {name: value for name, value in host.widget_defaults(m.node.node_id).items()}
    if m.text_attention:
        inputs["text_attention"] = ["2", 0]
    if m.word_input:
        inputs[m.word_input] = m.example.words
    if m.example is not None:
        inputs.update(m.example.inputs)
    return {"class_type": m.node.node_id, "inputs": inputs}


def method_graph(host: ComfyHost, m) -> tuple[dict, list[list[str]]]:
    """A method's SD1.5 graph: its example prompt and seed through the route its example names."""
    e = m.example
    if e.route == "guided":
        return _guided(e.prompt, e.seed, method_node(host, m), m.graph, show_tokens=e.show_tokens)
    return _patched(e.prompt, e.seed, e.sampler, e.steps, method_node(host, m), m.graph, plot=e.plot)


def _patched(prompt_text: str, seed: int, sampler: str, steps: int, method: dict, prefix: str,
             plot: bool) -> tuple[dict, list[list[str]]]:
    """Checkpoint → method → Apply Guidance → Capture → the stock KSampler → decode/save + maps (the MODEL route)."""
    prompt = {
        **_head(prompt_text),
        "4": method,
        "5": {"class_type": "AttentionAlignApplyGuidance", "inputs": {"model": ["1", 0], "guidance": ["4", 0]}},
        "6": {"class_type": "AttentionAlignCaptureCrossAttention",
              "inputs": {"model": ["5", 0], "levels": 32, "record_steps": False}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["7", 0],
            "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": f"attention_align/{prefix}"}},
        "11": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["6", 1], "text_attention": ["2", 0], "image": ["9", 0], "words": "", "level": 32,
            "columns": 4, **({"guidance_log": ["5", 1]} if plot else {})}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0],
                                                     "filename_prefix": f"attention_align/{prefix}_maps"}},
    }
    return prompt, [["1", "7"], ["2", "3"], ["4", "5", "6"], ["8"], ["9", "11"], ["10", "12"]]


#: what to type for each graph on a real checkpoint (the Note node's last paragraph), and the steps to use
WORDS = {"capture_and_visualise": "Words: type your prompt in Text Self-Attention (it is also the positive prompt) and, "
                                  "optionally, the words to draw in Visualize Attention ('car, bench'; empty = every "
                                  "word).",
         **{m.graph: m.words_help for m in REGISTRY.METHODS}}
STEPS = {"capture_and_visualise": "20 (any count works)", **{m.graph: m.steps_help for m in REGISTRY.METHODS}}
#: the graphs on SD1.5, SDXL and the toy model, made from the live node schemas
MAKERS = {"capture_and_visualise": lambda host: capture_and_visualise(),
          **{m.graph: (lambda host, m=m: method_graph(host, m)) for m in REGISTRY.METHODS if m.unet}}
#: what a gradient method's DiT Note says (the edits say it in their registry entry)
GRADIENT_DIT_HELP = ("Level 16: the maps of every joint-attention block (the only level a DiT has). No official DiT "
                     "settings exist for this method; these are its SD1.5 ones (gsn-factory uses the same on SD3).")


def dit_method_graph(host: ComfyHost, family: str, m) -> tuple[dict, list[list[str]]]:
    """A method's graph on a DiT, applied with Apply Guidance before the capture: a method that also runs on UNets
    with its SD1.5 graph's prompt and node, at level 16 (every joint block) where it has a level; its loss per step
    drawn when its example plots it."""
    if not m.unet:
        return capture_and_visualise_dit(family, method_node(host, m))
    unet, _ = method_graph(host, m)
    method = unet["4"]
    if "level" in method["inputs"]:
        method["inputs"]["level"] = 16
    return capture_and_visualise_dit(family, method, text=unet["2"]["inputs"]["text"], plot=m.example.plot)


#: the graphs that run on DiT models (Flux, SD3.5), made per family
DIT_MAKERS = {"capture_and_visualise": lambda host, family: capture_and_visualise_dit(family),
              **{m.graph: (lambda host, family, m=m: dit_method_graph(host, family, m))
                 for m in REGISTRY.METHODS if m.dit}}
WORKFLOWS = {**{f"{graph}_{family}.json": (graph, family) for graph in MAKERS for family in FAMILIES},
             **{f"{graph}_{family}.json": (graph, family) for graph in DIT_MAKERS for family in DIT}}


def _settings(graph: str) -> str:
    """What the method's Note says of its defaults where a reader may need it (a sentence after the words)."""
    m = next((m for m in REGISTRY.METHODS if m.graph == graph), None)
    return f" {m.settings_help}" if m is not None and m.settings_help else ""


def _dit_method_note(graph: str) -> str:
    """The method's paragraph in a DiT workflow's Note: what to type, and how it runs on a DiT."""
    m = next((m for m in REGISTRY.METHODS if m.graph == graph), None)
    if m is None:
        return ""
    parts = [m.words_help if m.unet else "", m.settings_help, GRADIENT_DIT_HELP if m.kind == "gradient" else "",
             m.dit_help]
    return "\n\n" + " ".join(p for p in parts if p)


def note_text(graph: str, family: str) -> str:
    """The workflow's Note: what to change for a real checkpoint of its family, and what to type."""
    if family in DIT:
        d = DIT[family]
        return (f"Set up for {d['name']} (a DiT: the maps are the image→text part of its joint attention, at image "
                f"÷16).\n\n{d['files']}\n"
                f"Empty SD3 Latent Image: {d['size']}×{d['size']}. Steps: {d['steps']}, cfg {d['cfg']:g}"
                + (" (Flux-dev is guidance-distilled: FluxGuidance 3.5 sets its guidance)" if family == "flux" else "")
                + ".\n\nWords: type your prompt in Text Self-Attention (it reads T5 and is also the positive prompt) "
                "and, optionally, the words to draw in Visualize Attention ('car, bench'; empty = every word)."
                + _dit_method_note(graph))
    if family == "toy":
        return (f"Set up for the pack's toy model: a small text-to-image model of coloured shapes (circle, square, "
                f"triangle, star, cross, heart × red, green, blue, yellow, purple, orange, white), trained by "
                f"toy/train.py and shipped with the pack. It runs on a CPU in seconds.\n\n"
                f"Load Toy Model: attention-align/toy_shapes.safetensors. Empty Latent Image: 128×128 (its size). "
                f"Level: {TOY_LEVEL} (its 8×8 maps). Steps: {TOY_STEPS}.\n"
                f"For real checkpoints open {graph}_sd15.json or {graph}_sdxl.json.\n\n"
                f"{WORDS[graph]} Type shapes and colours the toy model knows." + _settings(graph))
    f, other = FAMILIES[family], next(v for k, v in FAMILIES.items() if k not in (family, "toy"))
    other_file = f"{graph}_{next(k for k in FAMILIES if k not in (family, 'toy'))}.json"
    return (f"Set up for {f['name']}.\n\n"
            f"Load Checkpoint: {f['ckpt']} (or any {f['name']} checkpoint) in ComfyUI/models/checkpoints.\n"
            f"Empty Latent Image: {f['size']}×{f['size']} (the size {f['name']} was trained at; other sizes work, "
            f"level 32 then gives maps of size/32).\n"
            f"Steps: {STEPS[graph]}.\n"
            f"For {other['name']} open {other_file} instead ({other['size']}×{other['size']}, {other['ckpt']}).\n\n"
            f"{WORDS[graph]}{_settings(graph)}\n\n"
            "To try a graph without any checkpoint, open its _toy.json twin (the pack's own small model).")


def _note_node(node_id: int, order: int, pos: tuple, size: tuple, text: str) -> dict:
    """ComfyUI's core Note node in the UI format (one text widget, no sockets; it is not sent to the server)."""
    return {"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {}, "order": order,
            "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def for_family(prompt: dict, family: str, graph: str = "") -> dict:
    """The graph with the family's checkpoint and image size (for the toy model also its loader, level, steps,
    sampler, prompt and words)."""
    f = FAMILIES[family]
    if family == "toy":
        text, words = TOY[graph]
        for node in prompt.values():
            inputs = node["inputs"]
            if node["class_type"] == "CheckpointLoaderSimple":      # the same outputs: MODEL, CLIP, VAE
                node["class_type"] = "AttentionAlignLoadToyModel"
            if node["class_type"] == "AttentionAlignTextSelfAttention":
                inputs["text"] = text
            if node["class_type"] == "CLIPTextEncode":
                inputs["text"] = ""
            for key in ("level", "levels"):
                if inputs.get(key) == 32:
                    inputs[key] = TOY_LEVEL
            if "steps" in inputs:
                inputs["steps"] = TOY_STEPS
            if inputs.get("sampler_name") == "ddim":
                inputs["sampler_name"], inputs["scheduler"] = "euler", "normal"
            if "cfg" in inputs:
                inputs["cfg"] = 5.0
            for key, value in words.items():
                if key in inputs:
                    inputs[key] = value
            if node["class_type"] == "AttentionAlignShowTokens":
                inputs["subjects"], inputs["groups"] = words.get("subjects", ""), words.get("groups", "")
    for node in prompt.values():
        if node["class_type"] in ("CheckpointLoaderSimple", "AttentionAlignLoadToyModel"):
            node["inputs"]["ckpt_name"] = f["ckpt"]
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = f["size"]
    return prompt


def ui_workflow(name: str, host: ComfyHost) -> dict:
    """The UI-format workflow ``name`` as the generator writes it from today's node schemas (with its Note)."""
    graph, family = WORKFLOWS[name]
    if family in DIT:
        prompt, columns = DIT_MAKERS[graph](host, family)
    else:
        prompt, columns = MAKERS[graph](host)
        prompt = for_family(prompt, family, graph)
    note_id = str(max(int(k) for k in prompt) + 1)
    columns[0].append(note_id)
    positions, sizes, view = layout({**prompt, note_id: {"class_type": "Note"}}, host, columns)
    ui = api_to_ui(prompt, host, positions, sizes, view)
    ui["nodes"].append(_note_node(int(note_id), len(ui["nodes"]), positions[note_id], sizes[note_id],
                                  note_text(graph, family)))
    ui["last_node_id"] = int(note_id)
    return ui


def main() -> None:
    comfy = require_comfyui()
    host = ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_build_")))
    for name in WORKFLOWS:
        path = REPO_ROOT / "example_workflows" / name
        path.write_text(json.dumps(ui_workflow(name, host), indent=1) + "\n")
        print("wrote", path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
