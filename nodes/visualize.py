"""Node: per-word cross-attention heat maps over the image, and T-SAM's S beside T."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.engine import GuidanceRecord
from ..guidance.maps import AttentionMaps
from ..guidance.similarity import tsam_similarity
from ..guidance.text_attention import TextAttention
from ..guidance.tokens import resolve_words
from ..guidance.viz import grid, heat_tiles, word_maps
from .host.backend import VAE_FACTOR
from .host.context import resolve_record
from .host.inputs import maps_at, recorded_level
from .host.render import heat_tile_with_legend, line_plot_tile, matrix_tile
from .types import CATEGORY, AttentionMapsType, GuidanceLogType, TextAttentionType

DEFAULT_TILE = 512


def _pieces(ta: TextAttention) -> list[str]:
    return ta.prompt_labels


class VisualizeAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignVisualize",
            display_name="Visualize Attention",
            category=CATEGORY,
            description="Draws one labelled heat map per chosen word from captured cross-attention, over the "
                        "decoded image when given, plus T-SAM's text target T and the cross-attention similarity S "
                        "side by side. One grid image per batch item.",
            inputs=[
                AttentionMapsType.Input("attention_maps", optional=True,
                                        tooltip="From a Guided KSampler, or from Capture Cross-Attention (then connect "
                                                "the sampler's LATENT too: it says which run to draw and makes this "
                                                "node run after it)."),
                TextAttentionType.Input("text_attention", optional=True,
                                        tooltip="From Text Self-Attention: the prompt's tokens (labels) and T."),
                io.Image.Input("image", optional=True, tooltip="Decoded image to draw the maps over."),
                GuidanceLogType.Input("guidance_log", optional=True,
                                      tooltip="From a Guided KSampler or Apply Guidance: adds a loss-per-step plot."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The LATENT of the sampler whose run to draw, for maps and logs from Capture "
                                        "Cross-Attention or Apply Guidance (whose model a sampler runs later; one "
                                        "model may feed several samplers). Not needed for a Guided KSampler's."),
                io.String.Input("words", default="",
                                tooltip="Words to show, comma-separated (e.g. 'car, bench', a second occurrence "
                                        "as 'dog#2'); empty = every word of the prompt."),
                recorded_level("level", "Which recorded resolution to draw (0 averages every recorded level); "
                                        "S is computed from the same maps."),
                io.Int.Input("columns", default=4, min=1, max=16, tooltip="Tiles per row of the grid."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="image",
                                tooltip="One grid per batch item: word heat maps, then T and S, then the loss plot."),
                io.String.Output("labels", display_name="labels", tooltip="The tiles' titles, one per line, in grid order."),
            ],
        )

    @classmethod
    def execute(cls, words: str, level: int, columns: int, attention_maps=None, text_attention=None,
                image=None, guidance_log=None, latent=None) -> io.NodeOutput:
        if attention_maps is None and text_attention is None and guidance_log is None:
            raise ValueError("attention_maps / text_attention / guidance_log: connect at least one of them")
        samples = None if latent is None else latent["samples"]
        if attention_maps is not None:
            attention_maps = resolve_record(attention_maps, latent=samples, input_name="attention_maps")
        if guidance_log is not None:
            guidance_log = resolve_record(guidance_log, latent=samples, input_name="guidance_log")
        ta: TextAttention | None = text_attention
        tiles: list[list[torch.Tensor]] = []      # per batch item
        labels: list[str] = []
        size = (DEFAULT_TILE, DEFAULT_TILE)
        if attention_maps is not None:
            rec: AttentionMaps = attention_maps
            if rec.empty:
                raise ValueError("attention_maps: that sampling run recorded nothing (no layer of the captured level "
                                 "ran with a positive prompt)")
            if ta is None:
                raise ValueError("text_attention: needed with attention_maps to know which token is which word; "
                                 "connect the Text Self-Attention node that encoded the positive prompt")
            maps = maps_at(rec, level)                                      # [B, T, h, w]
            if maps.shape[1] < ta.prompt_slice.stop:
                raise ValueError(f"text_attention: its prompt ({ta.encoder}) sits at context positions "
                                 f"{ta.prompt_slice.start}–{ta.prompt_slice.stop - 1}, but the recorded maps have "
                                 f"{maps.shape[1]} tokens; connect the Text Self-Attention that encoded this "
                                 "sampler's positive prompt")
            chosen = resolve_words(words, ta.words)
            per_word = word_maps(maps, chosen)                               # [B, n, h, w]
            b = maps.shape[0]
            if image is not None and image.shape[0] not in (1, b) and b != 1:
                raise ValueError(f"image: batch of {image.shape[0]} does not match the {b} sampled latents")
            n_items = max(b, image.shape[0] if image is not None else 1)
            size = tuple(image.shape[1:3]) if image is not None else \
                (VAE_FACTOR * rec.latent_size[0], VAE_FACTOR * rec.latent_size[1])
            sim = tsam_similarity(maps[:, ta.prompt_slice], causal=ta.causal)   # [B, L, L]
            for i in range(n_items):
                bg = image[min(i, image.shape[0] - 1)].float().cpu() if image is not None else None
                item_maps = per_word[min(i, b - 1)]                          # [n, h, w]
                heat = heat_tiles(item_maps, size, bg)                       # [n, H, W, 3]
                item = [heat_tile_with_legend(t, w.label, float(m.min()), float(m.max()))
                        for t, w, m in zip(heat, chosen, item_maps)]
                item.append(matrix_tile(ta.target(), _pieces(ta), size, "T: text self-attention",
                                      lower_only=ta.causal))
                item.append(matrix_tile(sim[min(i, b - 1)], _pieces(ta), size, "S: cross-attention similarity",
                                        lower_only=ta.causal))
                tiles.append(item)
            labels = [w.label for w in chosen] + ["T", "S"]
        elif ta is not None:
            tiles.append([matrix_tile(ta.target(), _pieces(ta), size, "T: text self-attention",
                                      lower_only=ta.causal)])
            labels = ["T"]
        if guidance_log is not None:
            plots = _loss_plots(guidance_log, size)
            if not tiles:
                tiles = [[] for _ in plots]
            if len(plots) not in (1, len(tiles)) and len(tiles) != 1:
                raise ValueError(f"guidance_log: {len(plots)} samples do not match the {len(tiles)} images")
            n_items = max(len(plots), len(tiles))
            tiles = [tiles[min(i, len(tiles) - 1)] + [plots[min(i, len(plots) - 1)]] for i in range(n_items)]
            labels.append("loss")
        canvases = torch.stack([grid(torch.stack(item), columns) for item in tiles])
        return io.NodeOutput(canvases, "\n".join(labels))


def _loss_plots(log: GuidanceRecord, size: tuple[int, int]) -> list[torch.Tensor]:
    """One loss-per-step plot per sample of one guided run."""
    steps, curves = log.loss_curve()                                        # [n_steps, B]
    if not steps and log.path == "attention edit":
        raise ValueError(f"guidance_log: {log.method} optimises no loss, so there is nothing to plot; disconnect it")
    if not steps:
        raise ValueError("guidance_log: that sampling run took no guided step (guided_steps rounds to 0 for its "
                         "step count); there is no loss to plot")
    refined = {s.step for s in log.steps if s.iterations is not None}
    finals = torch.stack([s.loss_final.detach().float().cpu() for s in log.steps])   # [n_steps, B]
    title = f"{log.method} loss per step ({log.sampler})"
    return [line_plot_tile(steps, curves[:, b].tolist(), size, title, marks=refined, ends=finals[:, b].tolist())
            for b in range(curves.shape[1])]
