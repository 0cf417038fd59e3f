"""Write the UI-format workflows in workflows/ from their API-format definitions below.

The UI format (what ComfyUI's frontend saves and loads) stores widget values by position, in the order of each
node's schema; generating it from the live node definitions keeps the files in step with the nodes. Run after
changing a node's inputs:  .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from headless import REPO_ROOT, ComfyHost, api_to_ui, find_comfyui

SD15 = "v1-5-pruned-emaonly.safetensors"


def capture_and_visualise() -> tuple[dict, dict]:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["1", 1], "text": "a red car and a blue bench", "encoder": "auto", "gamma": 3.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry, low quality"}},
        "4": {"class_type": "AttentionAlignCaptureCrossAttention",
              "inputs": {"model": ["1", 0], "levels": "all", "record_steps": False}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 4913, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["4", 1], "text_attention": ["2", 0], "image": ["7", 0], "words": "", "level": "all",
            "columns": 4}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "attention_align/maps"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "attention_align/image"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    positions = {"1": (40, 320), "2": (420, 60), "3": (420, 330), "4": (420, 560), "5": (420, 760), "6": (860, 300),
                 "11": (860, 20), "7": (1220, 300), "10": (1220, 540), "8": (1600, 300), "9": (2000, 300)}
    return prompt, positions


def tsam() -> tuple[dict, dict]:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["1", 1], "text": "a black car and a white clock", "encoder": "auto", "gamma": 3.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "AttentionAlignTSAM", "inputs": {
            "text_attention": ["2", 0], "loss": "paper", "strength": 1.0, "scale_factor": 5.0, "guided_steps": 30,
            "refine": "official", "threshold_per_token": 0.14, "level": 32}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
            "model": ["1", 0], "seed": 4913, "steps": 50, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "ddim_uniform", "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["5", 0],
            "denoise": 1.0, "guidance": ["4", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "attention_align/tsam"}},
        "9": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["6", 1], "text_attention": ["2", 0], "image": ["7", 0], "guidance_log": ["6", 2],
            "words": "", "level": "32", "columns": 4}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "attention_align/tsam_maps"}},
    }
    positions = {"1": (40, 320), "2": (420, 60), "3": (420, 330), "4": (860, 40), "5": (420, 560), "6": (860, 330),
                 "7": (1240, 330), "8": (1240, 520), "9": (1600, 330), "10": (2000, 330)}
    return prompt, positions


def _guided(prompt_text: str, seed: int, method: dict, prefix: str) -> tuple[dict, dict]:
    """Checkpoint → Text Self-Attention → method node → Guided KSampler → decode/save, + Show Tokens, + maps."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["1", 1], "text": prompt_text, "encoder": "auto", "gamma": 3.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
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
            "words": "", "level": "32", "columns": 4}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0],
                                                     "filename_prefix": f"attention_align/{prefix}_maps"}},
        "11": {"class_type": "AttentionAlignShowTokens", "inputs": {
            "text_attention": ["2", 0], "subjects": method["inputs"].get("subjects", ""),
            "groups": method["inputs"].get("groups", ""), "parser": "builtin"}},
    }
    positions = {"1": (40, 320), "2": (420, 60), "3": (420, 330), "4": (860, 20), "5": (420, 560), "6": (860, 360),
                 "7": (1240, 360), "8": (1240, 560), "9": (1600, 360), "10": (2000, 360), "11": (1240, 40)}
    return prompt, positions


def attend_and_excite() -> tuple[dict, dict]:
    return _guided("a cat and a frog", 42, {"class_type": "AttentionAlignAttendExcite", "inputs": {
        "text_attention": ["2", 0], "subjects": "cat, frog", "parser": "builtin", "softmax": "official",
        "strength": 1.0, "scale_factor": 20.0, "guided_steps": 25, "max_refinement_steps": 20, "level": 32}},
        "attend_and_excite")


def syngen() -> tuple[dict, dict]:
    return _guided("a checkered bowl on a red and blue table", 1924, {"class_type": "AttentionAlignSynGen", "inputs": {
        "text_attention": ["2", 0], "groups": "", "parser": "builtin", "strength": 1.0, "scale_factor": 20.0,
        "guided_steps": 25, "level": 32}}, "syngen")


WORKFLOWS = {"capture_and_visualise_sd15.json": capture_and_visualise, "tsam_sd15.json": tsam,
             "attend_and_excite_sd15.json": attend_and_excite, "syngen_sd15.json": syngen}


def main() -> None:
    comfy = find_comfyui()
    if comfy is None:
        sys.exit("needs a ComfyUI checkout (COMFYUI_PATH or ~/ComfyUI)")
    host = ComfyHost(comfy, Path(tempfile.mkdtemp(prefix="aa_build_")))
    for name, make in WORKFLOWS.items():
        prompt, positions = make()
        path = REPO_ROOT / "workflows" / name
        path.write_text(json.dumps(api_to_ui(prompt, host, positions), indent=1) + "\n")
        print("wrote", path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
