"""Reading the text encoder's self-attention during one encode, and decoding its tokens.

ComfyUI's text encoders call their attention kernel directly (no patch point, no transformer_options), so the
probabilities are recomputed from each attention module's own q/k projections in a forward hook (CLIP's
``CLIPAttention``; T5's ``T5Attention``, with its relative-position bias). The hooks sit on the shared, cached
encoder module and are removed in ``finally``, also when encoding fails.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ...guidance.text_attention import TwinSpan, text_attention_from_scores
from ...guidance.tokens import (
    BOS_PIECE,
    EMBEDDING_PIECE,
    EOS_PIECE,
    SP_EOS_PIECE,
    find_eos,
    find_sp_eos,
    group_sp_words,
    group_words,
)

ENCODER_KEYS = {"clip_l": "l", "clip_g": "g", "clip_h": "h", "t5xxl": "t5xxl"}


def t5_only_context(clip, tokens: dict) -> bool:
    """Whether the model's context is T5's output alone (Flux: CLIP-L only gives the pooled vector)."""
    return "t5xxl" in tokens and "g" not in tokens and getattr(clip.cond_stage_model, "t5xxl", None) is not None


def encoder_for(clip, tokens: dict, choice: str, input_name: str = "encoder") -> str:
    """The encoder attribute (``clip_l``…, ``t5xxl``) to read: ``choice``, or for ``auto`` T5 when the CLIP has one
    (Flux, SD3: the context's long, descriptive part), else clip_l when present, else the only one."""
    available = [name for name, key in ENCODER_KEYS.items()
                 if key in tokens and getattr(clip.cond_stage_model, name, None) is not None]
    if not available:
        raise ValueError(f"clip: no supported text encoder (clip_l, clip_g, clip_h, t5xxl) found in this text encoder "
                         f"(it tokenizes for {sorted(tokens)}); Attention Align supports the text encoders of SD1.x, "
                         "SD2.x, SDXL, Flux and SD3/SD3.5")
    if choice == "auto":
        return "t5xxl" if "t5xxl" in available else "clip_l" if "clip_l" in available else available[0]
    if choice not in available:
        raise ValueError(f"{input_name}: '{choice}' is not part of this CLIP; available: {', '.join(available)}")
    if choice != "t5xxl" and t5_only_context(clip, tokens):
        raise ValueError(f"{input_name}: with this CLIP (Flux) the model reads T5's tokens only; {choice} gives just "
                         "the pooled vector, so its tokens have no maps. Use t5xxl or auto.")
    return choice


def twin_span(clip, tokens: dict, encoder: str, text: str, context_tokens: int) -> TwinSpan | None:
    """The other encoder of a context made of CLIP-L/G's 77 tokens followed by T5's (SD3), when ``encoder`` is one of
    them: T5's words after the CLIP window when reading CLIP, CLIP-L's words (bos at 0) when reading T5. None where
    the context holds one encoder's tokens (SD1.x, SD2.x, SDXL; Flux, whose CLIP-L only gives a pooled vector)."""
    if "t5xxl" not in tokens or "l" not in tokens or t5_only_context(clip, tokens) \
            or getattr(clip.cond_stage_model, "clip_l", None) is None:
        return None
    if encoder == "t5xxl":
        pieces, _ = decode_chunk(clip, "clip_l", tokens["l"][0])
        eos = find_eos(pieces)
        return TwinSpan("clip_l", tuple(group_words(pieces, eos, embedding_counts(clip, "clip_l", text))), 1, eos,
                        len(pieces))
    pieces, _ = decode_chunk(clip, "t5xxl", tokens["t5xxl"][0])
    offset = context_tokens - len(pieces)
    eos = find_sp_eos(pieces)
    return TwinSpan("t5xxl", tuple(group_sp_words(pieces, eos, offset=offset)), offset, offset + eos,
                    offset + len(pieces))


def decode_chunk(clip, encoder: str, chunk: list) -> tuple[list[str], list[int | None]]:
    """BPE pieces and ids of one 77-token chunk (``(token, weight)`` pairs); embedding vectors become ``<embedding>``."""
    tokenizer = getattr(clip.tokenizer, encoder)
    inv = getattr(tokenizer, "inv_vocab", None)
    if inv is None:
        inv = {v: k for k, v in tokenizer.tokenizer.get_vocab().items()}
    pieces, ids = [], []
    for entry in chunk:
        token = entry[0]
        if isinstance(token, torch.Tensor) or not isinstance(token, int):
            pieces.append(EMBEDDING_PIECE)
            ids.append(None)
        else:
            pieces.append(inv.get(token, f"<{token}>"))
            ids.append(token)
    if encoder != "t5xxl" and pieces[0] != BOS_PIECE:
        raise ValueError(f"clip: unexpected first token {pieces[0]!r} (expected {BOS_PIECE})")
    return pieces, ids


def prompt_token_count(clip, encoder: str, chunks: list) -> int:
    """Prompt tokens (between bos and eos; T5: before its end token) over all chunks."""
    start, end = (0, SP_EOS_PIECE) if encoder == "t5xxl" else (1, EOS_PIECE)
    total = 0
    for chunk in chunks:
        pieces, _ = decode_chunk(clip, encoder, chunk)
        eos = next((i for i, p in enumerate(pieces[start:], start) if p == end), len(pieces))
        total += eos - start
    return total


@contextmanager
def record_text_attention(clip, encoder: str):
    """Hook every self-attention layer of ``clip.cond_stage_model.<encoder>`` for one encode.

    Yields a list with one entry per layer that becomes ``[heads, T, T]`` (float32, CPU) for batch row 0 (the
    prompt's first chunk) at the layer's first call; later calls (a weighted prompt's empty row, scheduled
    re-encodes) are ignored.
    """
    if encoder == "t5xxl":
        with _record_t5_attention(clip) as recorded:
            yield recorded
        return
    layers = getattr(clip.cond_stage_model, encoder).transformer.text_model.encoder.layers
    recorded: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(index: int):
        def hook(module, args, output):
            if recorded[index] is not None:
                return
            x = args[0][:1]
            mask = args[1] if len(args) > 1 else None
            if mask is not None and mask.ndim > 2:   # [b, 1, T, T] with a padding mask; [T, T] causal only
                mask = mask[:1]
            probs = text_attention_from_scores(module.q_proj(x), module.k_proj(x), mask, module.heads)
            recorded[index] = probs[0].detach().float().cpu()
        return hook

    handles = []
    try:
        for i, layer in enumerate(layers):
            handles.append(layer.self_attn.register_forward_hook(make_hook(i)))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _record_t5_attention(clip):
    """:func:`record_text_attention` for ComfyUI's T5 encoder (``T5Attention``, bidirectional): the scores are
    ``q·kᵀ`` (T5 does not scale them; ComfyUI multiplies k by √d before its kernel divides by it) plus the call's
    mask and the relative-position bias the layer returns."""
    blocks = clip.cond_stage_model.t5xxl.transformer.encoder.block
    recorded: list[torch.Tensor | None] = [None] * len(blocks)

    def make_hook(index: int):
        def hook(module, args, kwargs, output):
            if recorded[index] is not None:
                return
            x = (args[0] if args else kwargs["x"])[:1]
            mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
            bias = output[1]
            total = bias if mask is None else bias + mask[:1]
            d = module.q.weight.shape[0] // module.num_heads
            probs = text_attention_from_scores(module.q(x), module.k(x) * d ** 0.5, total, module.num_heads)
            recorded[index] = probs[0].detach().float().cpu()
        return hook

    handles = []
    try:
        for i, block in enumerate(blocks):
            handles.append(block.layer[0].SelfAttention.register_forward_hook(make_hook(i), with_kwargs=True))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def embedding_counts(clip, encoder: str, text: str) -> list[tuple[str, int]]:
    """``(name, vector count)`` of the textual-inversion embeddings the tokenizer will insert, in prompt order.

    Follows ``SDTokenizer.tokenize_with_weights``: weighted segments are split at " embedding:" (or a leading
    "embedding:"), and a name the tokenizer cannot load is dropped there too.
    """
    import re

    from comfy import sd1_clip

    tok = getattr(clip.tokenizer, encoder, None)
    ident = getattr(tok, "embedding_identifier", None)
    if tok is None or not ident or ident not in text or getattr(tok, "embedding_directory", None) is None:
        return []
    out = []
    for segment, _ in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0):
        parts = re.split(f" {ident}|\n{ident}", sd1_clip.unescape_important(segment))
        for word in [parts[0]] + [ident + p for p in parts[1:]]:
            if not word.startswith(ident):
                continue
            embed, _ = tok._try_get_embedding(word[len(ident):].strip("\n"))
            if embed is not None:
                out.append((word[len(ident):].split()[0].strip(","), 1 if embed.ndim == 1 else int(embed.shape[0])))
    return out
