"""The text encoder's self-attention and the T-SAM target matrix T built from it (T-SAM paper, §3.2)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .tokens import Word, display_piece, find_eos, find_sp_eos, group_sp_words, group_words, sp_display


def text_attention_from_scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Self-attention probabilities ``softmax(q kᵀ/√d + mask)`` per head, in float32.

    q, k: ``[b, T, heads·d]`` (already projected); mask: additive, broadcastable to ``[b, heads, T, T]``
    (the text encoder's causal mask). Returns ``[b, heads, T, T]``; every row sums to 1.
    """
    b, t, inner = q.shape
    d = inner // heads
    dtype = torch.promote_types(q.dtype, torch.float32)
    qh = q.to(dtype).view(b, t, heads, d).transpose(1, 2)   # [b, heads, T, d]
    kh = k.to(dtype).view(b, t, heads, d).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) * d ** -0.5          # [b, heads, T, T]
    if mask is not None:
        scores = scores + mask.to(dtype)
    return scores.softmax(dim=-1)


def tsam_target(mean_attention: torch.Tensor, eos_index: int, *, gamma: float = 3.0, start: int = 1) -> torch.Tensor:
    """T-SAM's target T̂ from the head- and layer-averaged text self-attention (T-SAM §3.2, released config).

    mean_attention: ``[T, T]``. Drops bos (the attention sink), eos and padding (``[start:eos, start:eos]``; CLIP's
    prompt starts at 1, after bos, T5's at 0), raises to γ and renormalises each row: ``T̂ = T^γ / (rowsum + 1e-7)``.
    Returns ``[L, L]`` with L = eos − start; lower-triangular for CLIP, whose encoder is causal, full for T5.
    """
    if eos_index - start < 1:
        raise ValueError("the prompt has no tokens before its end token")
    t = mean_attention[start:eos_index, start:eos_index].float() ** gamma
    return t / (t.sum(dim=-1, keepdim=True) + 1e-7)


@dataclass(frozen=True)
class TwinSpan:
    """The context's other text encoder where the model reads two (SD3: CLIP-L/G's 77 tokens, then T5's): which it
    is, its words (positions in the model's context) and its prompt's span there, ``[first, eos)``, in the window
    that ends at ``end``. Methods that read both encoders' maps of a word (gsn-factory's ``average_t5_clip``) take
    the word's positions in this span from here."""

    encoder: str
    words: tuple[Word, ...]
    first: int
    eos: int
    end: int


@dataclass
class TextAttention:
    """What the text self-attention node hands downstream (the ``TEXT_ATTENTION`` type).

    ``probs`` is ``[layers, heads, T, T]`` float32 on the CPU for the prompt's first (only) 77-token chunk (T5: its
    one sequence); ``pieces`` are the decoded pieces of that chunk (BPE for CLIP, ``<embedding>`` for an embedding
    vector; SentencePiece for T5). Word positions are positions in the *model's* context: ``offset`` is where this
    encoder's token 0 sits there (SD3's T5 follows 77 CLIP tokens; 0 otherwise).
    """

    encoder: str                      # "clip_l", "clip_g", "clip_h" or "t5xxl": which text encoder this came from
    prompt: str
    probs: torch.Tensor               # [layers, heads, T, T]
    pieces: list[str]
    token_ids: list[int | None]       # None where the token is an embedding vector
    gamma: float = 3.0
    context: torch.Tensor | None = None  # the encoded prompt [1, T, C] this attention came from (CPU, float32)
    embeddings: list[tuple[str, int]] = field(default_factory=list)  # (name, vectors) of embeddings, in order
    offset: int = 0                   # position of this encoder's token 0 in the model's context
    twin: TwinSpan | None = None      # the other encoder's words where the context holds two (SD3), else None
    eos_index: int = field(init=False)
    words: list[Word] = field(init=False)

    def __post_init__(self) -> None:
        if self.sentencepiece:
            self.eos_index = find_sp_eos(self.pieces)
            self.words = group_sp_words(self.pieces, self.eos_index, offset=self.offset)
        else:
            if self.offset:
                raise ValueError(f"text attention of {self.encoder}: a CLIP prompt starts the context (offset 0), "
                                 f"not at {self.offset}")
            self.eos_index = find_eos(self.pieces)
            self.words = group_words(self.pieces, self.eos_index, self.embeddings)

    @property
    def sentencepiece(self) -> bool:
        """T5's SentencePiece tokens (no start token) rather than CLIP's byte-level BPE."""
        return self.encoder == "t5xxl"

    @property
    def causal(self) -> bool:
        """Whether the encoder's attention is causal (CLIP: T is lower-triangular, and T-SAM compares entries j ≤ i)
        or bidirectional (T5: whole rows)."""
        return not self.sentencepiece

    def piece_label(self, piece: str) -> str:
        """One piece as a person reads it: decoded text without ``</w>``, or without T5's word-start mark ``▁`` (a
        bare one shown as ``_``)."""
        return (sp_display([piece]) or "_") if self.sentencepiece else display_piece(piece)

    @property
    def start(self) -> int:
        """Position of the prompt's first token in the encoder's sequence: 1 after CLIP's bos, 0 for T5."""
        return 0 if self.sentencepiece else 1

    @property
    def num_prompt_tokens(self) -> int:
        """L: the number of the prompt's tokens (between bos and eos)."""
        return self.eos_index - self.start

    @property
    def prompt_slice(self) -> slice:
        """The prompt's tokens in the model's context (what the maps' token axis is indexed with)."""
        return slice(self.offset + self.start, self.offset + self.eos_index)

    @property
    def context_eos(self) -> int:
        """The end token's position in the model's context (what the methods' ``eos_index`` is)."""
        return self.offset + self.eos_index

    @property
    def starts_context(self) -> bool:
        """Whether the model's context begins with a CLIP start token (SD1.x/SD2.x/SDXL, and SD3, whose context is
        CLIP-L/G then T5); Flux's context is T5 alone, whose position 0 is the prompt's first piece."""
        return not self.sentencepiece or self.offset > 0

    @property
    def context_end(self) -> int:
        """End of this encoder's span of the model's context (CLIP: its 77-token window; T5: its sequence)."""
        return self.offset + len(self.pieces)

    @property
    def prompt_pieces(self) -> list[str]:
        """The prompt's pieces (what the rows and columns of T̂ are)."""
        return self.pieces[self.start:self.eos_index]

    @property
    def prompt_labels(self) -> list[str]:
        """The prompt pieces as a person reads them (:meth:`piece_label`): labels for plots."""
        return [self.piece_label(p) for p in self.prompt_pieces]

    def mean_attention(self) -> torch.Tensor:
        """``[T, T]``: mean over heads and over all layers."""
        return self.probs.mean(dim=(0, 1))

    def target(self, gamma: float | None = None) -> torch.Tensor:
        """T̂ ``[L, L]`` (see :func:`tsam_target`), with this node's γ unless another is given."""
        return tsam_target(self.mean_attention(), self.eos_index, gamma=self.gamma if gamma is None else gamma,
                           start=self.start)
