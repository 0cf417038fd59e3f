"""Node: per-word cross-attention heat maps over the image, and T-SAM's S beside T."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.maps import AttentionRecorder
from ..guidance.similarity import tsam_similarity
from ..guidance.text_attention import TextAttention
from ..guidance.tokens import resolve_words
from ..guidance.viz import combine_sizes, grid, heat_tiles, word_maps
from ._render import label_tile, matrix_tile
from ._unet import VAE_FACTOR
from .types import CATEGORY, AttentionMapsType, TextAttentionType

DEFAULT_TILE = 512


def _maps_at(recorder: AttentionRecorder, level: str) -> torch.Tensor:
    """``[B, T, h, w]`` at one image divisor, or all recorded levels averaged at the finest size."""
    sizes = recorder.sizes()
    by_level = {VAE_FACTOR * recorder.divisor(s): s for s in sizes}
    text = level.strip().lower().lstrip("÷/")
    if text in ("", "all"):
        return combine_sizes([recorder.mean(s) for s in sizes])
    if not text.isdigit() or int(text) not in by_level:
        raise ValueError(f"level: '{level}' was not recorded; use 'all' or one of "
                         f"{', '.join(str(k) for k in sorted(by_level))}")
    return recorder.mean(by_level[int(text)])


def _pieces(ta: TextAttention) -> list[str]:
    return [p.replace("</w>", "") for p in ta.prompt_pieces]


class VisualizeAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignVisualize",
            display_name="Visualize Attention (Attention Align)",
            category=CATEGORY,
            description="Draws one labelled heat map per chosen word from captured cross-attention, over the "
                        "decoded image when given, plus T-SAM's text target T and the cross-attention similarity S "
                        "side by side. One grid image per batch item.",
            inputs=[
                AttentionMapsType.Input("attention_maps", optional=True,
                                        tooltip="From Capture Cross-Attention, read after its sampler ran (connect "
                                                "the decoded image too, so this node runs after sampling)."),
                TextAttentionType.Input("text_attention", optional=True,
                                        tooltip="From Text Self-Attention: the prompt's tokens (labels) and T."),
                io.Image.Input("image", optional=True, tooltip="Decoded image to draw the maps over."),
                io.String.Input("words", default="",
                                tooltip="Words to show, comma-separated (e.g. 'car, bench', a second occurrence "
                                        "as 'dog#2'); empty = every word of the prompt."),
                io.String.Input("level", default="all",
                                tooltip="Map resolution as an image divisor (8, 16, 32, 64) or 'all' to average "
                                        "every recorded level. S is computed from the same maps."),
                io.Int.Input("columns", default=4, min=1, max=16, tooltip="Tiles per row of the grid."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="image", tooltip="One grid per batch item: word heat maps, then T and S."),
                io.String.Output("labels", display_name="labels", tooltip="The tiles' titles, one per line, in grid order."),
            ],
        )

    @classmethod
    def execute(cls, words: str, level: str, columns: int, attention_maps=None, text_attention=None,
                image=None) -> io.NodeOutput:
        if attention_maps is None and text_attention is None:
            raise ValueError("attention_maps / text_attention: connect at least one of them")
        ta: TextAttention | None = text_attention
        tiles: list[list[torch.Tensor]] = []      # per batch item
        labels: list[str] = []
        if attention_maps is not None:
            rec: AttentionRecorder = attention_maps
            if rec.empty:
                raise ValueError("attention_maps: nothing was recorded yet. Run a sampler with the model from "
                                 "Capture Cross-Attention, and connect its decoded image here so this node runs "
                                 "after sampling.")
            if ta is None:
                raise ValueError("text_attention: needed with attention_maps to know which token is which word; "
                                 "connect the Text Self-Attention node that encoded the positive prompt")
            maps = _maps_at(rec, level)                                      # [B, T, h, w]
            chosen = resolve_words(words, ta.words)
            per_word = word_maps(maps, chosen)                               # [B, n, h, w]
            b = maps.shape[0]
            if image is not None and image.shape[0] not in (1, b) and b != 1:
                raise ValueError(f"image: batch of {image.shape[0]} does not match the {b} sampled latents")
            n_items = max(b, image.shape[0] if image is not None else 1)
            size = tuple(image.shape[1:3]) if image is not None else \
                (VAE_FACTOR * rec.latent_size[0], VAE_FACTOR * rec.latent_size[1])
            sim = tsam_similarity(maps[:, 1:ta.eos_index])                   # [B, L, L]
            for i in range(n_items):
                bg = image[min(i, image.shape[0] - 1)].float().cpu() if image is not None else None
                heat = heat_tiles(per_word[min(i, b - 1)], size, bg)         # [n, H, W, 3]
                item = [label_tile(t, w.label) for t, w in zip(heat, chosen)]
                item.append(matrix_tile(ta.target(), _pieces(ta), size, "T: text self-attention"))
                item.append(matrix_tile(sim[min(i, b - 1)], _pieces(ta), size, "S: cross-attention similarity"))
                tiles.append(item)
            labels = [w.label for w in chosen] + ["T", "S"]
        else:
            size = (DEFAULT_TILE, DEFAULT_TILE)
            tiles.append([matrix_tile(ta.target(), _pieces(ta), size, "T: text self-attention")])
            labels = ["T"]
        canvases = torch.stack([grid(torch.stack(item), columns) for item in tiles])
        return io.NodeOutput(canvases, "\n".join(labels))
