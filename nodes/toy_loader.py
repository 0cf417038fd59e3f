"""Node: load the toy text-to-image model (toy/train.py's file) as MODEL, CLIP and VAE through ComfyUI's classes.

ComfyUI's checkpoint detector cannot recognise the toy model (SD15 detection needs 320 UNet channels and the full
CLIP-L), so this node builds the three objects the way the checkpoint loader does, from the file's own config
(``toy.model.load_toy_model``). Files are listed from ``models/checkpoints`` and, prefixed ``attention-align/``, from
the pack's ``toy/weights`` (where the trained model is committed).
"""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..toy.model import IMAGE_SIZE, load_toy_model
from .types import CATEGORY

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "toy" / "weights"
BUNDLED_PREFIX = "attention-align/"


def toy_model_names() -> list[str]:
    """The choices: the pack's bundled toy files first, then every file in models/checkpoints."""
    bundled = sorted(BUNDLED_PREFIX + p.name for p in BUNDLED_DIR.glob("*.safetensors")) if BUNDLED_DIR.is_dir() else []
    return bundled + list(folder_paths.get_filename_list("checkpoints"))


def resolve(ckpt_name: str) -> Path:
    """The file a choice names; a bundled name that is missing is an error naming the folder."""
    if ckpt_name.startswith(BUNDLED_PREFIX):
        path = BUNDLED_DIR / ckpt_name[len(BUNDLED_PREFIX):]
        if not path.is_file():
            raise ValueError(f"ckpt_name: {ckpt_name!r} is not in {BUNDLED_DIR}")
        return path
    return Path(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name))


class LoadToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignLoadToyModel",
            display_name="Load Toy Model",
            category=CATEGORY,
            description=f"Loads the pack's small text-to-image model of coloured shapes (trained by toy/train.py) "
                        f"as MODEL, CLIP and VAE built from ComfyUI's own classes. Sample it at {IMAGE_SIZE}×"
                        f"{IMAGE_SIZE}; its cross-attention levels are 8 (16×16 maps) and 16 (8×8, the level to "
                        "give the methods).",
            inputs=[io.Combo.Input("ckpt_name", options=toy_model_names(),
                                   tooltip="A toy model file (a regular SD checkpoint loads with Load Checkpoint).")],
            outputs=[io.Model.Output("model"), io.Clip.Output("clip"), io.Vae.Output("vae")],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        model, clip, vae = load_toy_model(resolve(ckpt_name), input_name="ckpt_name",
                                          embedding_directory=folder_paths.get_folder_paths("embeddings"))
        return io.NodeOutput(model, clip, vae)
