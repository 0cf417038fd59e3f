"""Node: encode a prompt and read the text encoder's self-attention (T-SAM's T)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.text_attention import TextAttention
from .host.clip import (
    ENCODER_KEYS,
    decode_chunk,
    embedding_counts,
    encoder_for,
    prompt_token_count,
    record_text_attention,
    twin_span,
)
from .host.render import matrix_tile
from .types import CATEGORY, TextAttentionType

MAX_TOKENS = 75  # one 77-token window minus bos and eos


class TextSelfAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignTextSelfAttention",
            display_name="Text Self-Attention",
            category=CATEGORY,
            description="Encodes the prompt like CLIP Text Encode and records the text encoder's self-attention: "
                        "every layer and head, T as T-SAM defines it (mean over heads and layers, bos/eos/padding "
                        "removed, raised to γ, rows renormalised), the tokens and where each word sits.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP text encoder of your checkpoint."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a red car and a blue bench",
                                tooltip="The prompt (at most 75 CLIP tokens). Use the CONDITIONING output as the "
                                        "positive prompt so maps and labels belong to the same text."),
                io.Combo.Input("encoder", options=["auto", "clip_l", "clip_g", "clip_h", "t5xxl"], default="auto",
                               tooltip="Which text encoder's attention to read. auto: t5xxl when the CLIP has it "
                                       "(Flux, SD3/SD3.5), else clip_l when it has it (SD1.x, SDXL), else the only "
                                       "one (clip_h for SD2.x). On SD3 clip_l is also possible (its tokens start "
                                       "the context); on Flux only t5xxl is (CLIP-L gives just a pooled vector)."),
                io.Float.Input("gamma", default=3.0, min=0.1, max=10.0, step=0.1,
                               tooltip="T-SAM's power γ applied to T before rows are renormalised (paper: 3)."),
            ],
            outputs=[
                TextAttentionType.Output("text_attention", display_name="text_attention", tooltip="Per-layer, per-head self-attention, T, tokens "
                                                                   "and word positions."),
                io.Image.Output("image", display_name="T_image", tooltip="T as a heat map, tokens on both axes."),
                io.Conditioning.Output("conditioning", display_name="conditioning", tooltip="The encoded prompt, as CLIP Text Encode gives it."),
            ],
        )

    @classmethod
    def execute(cls, clip, text: str, encoder: str, gamma: float) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip: no CLIP given; the checkpoint may not contain a text encoder")
        if not text.strip():
            raise ValueError("text: the prompt is empty; type at least one word")
        tokens = clip.tokenize(text)
        name = encoder_for(clip, tokens, encoder)
        chunks = tokens[ENCODER_KEYS[name]]
        count = prompt_token_count(clip, name, chunks)
        if name != "t5xxl" and (len(chunks) > 1 or count > MAX_TOKENS):
            raise ValueError(f"text: the prompt has {count} tokens, more than fit in one 77-token window "
                             f"({MAX_TOKENS} tokens plus start and end); shorten it (text attention and its maps "
                             "are defined per window)")
        pieces, ids = decode_chunk(clip, name, chunks[0])
        if count == 0:
            raise ValueError("text: the prompt has no tokens (only spaces or characters the tokenizer drops)")
        with record_text_attention(clip, name) as recorded:
            conditioning = clip.encode_from_tokens_scheduled(tokens)
        if any(r is None for r in recorded):
            raise RuntimeError(f"text encoder {name}: {sum(r is None for r in recorded)} layers never ran")
        context = conditioning[0][0].detach().float().cpu()
        # T5 comes last in the model's context: after SD3's CLIP-L/G tokens, alone on Flux
        offset = context.shape[1] - len(chunks[0]) if name == "t5xxl" else 0
        result = TextAttention(encoder=name, prompt=text, probs=torch.stack(recorded), pieces=pieces,
                               token_ids=ids, gamma=gamma, context=context, offset=offset,
                               embeddings=[] if name == "t5xxl" else embedding_counts(clip, name, text),
                               twin=twin_span(clip, tokens, name, text, context.shape[1]))
        image = matrix_tile(result.target(), result.prompt_labels, (512, 512),
                            f"T = text self-attention^{gamma:g} ({name})", lower_only=result.causal)
        return io.NodeOutput(result, image[None], conditioning)
