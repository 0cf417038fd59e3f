"""Prompt words ↔ token positions, from the BPE pieces the model's own tokenizer produced.

Positions follow the convention of every official pipeline: 0 is ``<|startoftext|>`` (bos), the prompt's pieces
start at 1, and the first ``<|endoftext|>`` (eos) closes the prompt (SD1.x pads with further eos tokens, SDXL's
second encoder with id 0). Pieces come from the tokenizer's inverse vocabulary, where the last piece of a word ends
in ``</w>`` (``"check", "ered</w>"`` is one word). Pieces are byte-level BPE: each character stands for one byte of
the UTF-8 text (``café`` is the piece ``cafÃ©``), so words and labels are decoded back to text exactly as the
tokenizer's own decoder does (:func:`decode_pieces`) before they are matched or shown. Because positions are read off the actual tokenization, weight
syntax such as ``(red:1.2)`` needs no special handling: the weights change embeddings, not token positions.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

BOS_PIECE = "<|startoftext|>"
EOS_PIECE = "<|endoftext|>"
WORD_END = "</w>"
EMBEDDING_PIECE = "<embedding>"


@dataclass(frozen=True)
class Word:
    """One prompt word: its text (lower case, no ``</w>``), its token positions and which occurrence it is."""

    text: str
    positions: tuple[int, ...]
    occurrence: int

    @property
    def label(self) -> str:
        """``dog`` for a first occurrence, ``dog#2`` for the second, as users type it."""
        return self.text if self.occurrence == 1 else f"{self.text}#{self.occurrence}"


def piece_text(piece: str) -> str:
    """The BPE text of a piece without its word end: ``"red</w>"`` → ``"red"`` (still byte-level; see
    :func:`decode_pieces` for the text a person reads)."""
    return piece[: -len(WORD_END)] if piece.endswith(WORD_END) else piece


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's byte → character table (GPT-2/CLIP ``bytes_to_unicode``): printable Latin-1
    bytes stand for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def decode_pieces(pieces: list[str] | tuple[str, ...]) -> str:
    """The text that byte-level BPE pieces spell: ``["cafÃ©</w>"]`` → ``"café"``, ``["ðŁĲ¶</w>"]`` → ``"🐶"``.

    Word ends become nothing (a word's pieces are joined); special pieces (``<|endoftext|>``, ``<embedding>``) and
    characters outside the byte table are kept as they are; bytes that do not form valid UTF-8 on their own (a
    character split across pieces, shown piece by piece) become U+FFFD, as in the tokenizer's own decoder.
    """
    table = _byte_of_char()
    out: list[str] = []
    buf = bytearray()
    for piece in pieces:
        if piece.startswith("<") and piece.endswith(">") and not piece.endswith(WORD_END):
            out.append(buf.decode("utf-8", errors="replace") + piece)
            buf.clear()
            continue
        for ch in piece_text(piece):
            if ch in table:
                buf.append(table[ch])
            else:
                out.append(buf.decode("utf-8", errors="replace") + ch)
                buf.clear()
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


def display_piece(piece: str) -> str:
    """One piece as a label for a person: decoded text, ``</w>`` removed (``"cafÃ©</w>"`` → ``"café"``)."""
    return decode_pieces([piece])


def normalise(text: str) -> str:
    """How words are compared: Unicode NFC (so a composed and a decomposed ``é`` match), lower case."""
    return unicodedata.normalize("NFC", text).lower()


def find_eos(pieces: list[str]) -> int:
    """Index of the first eos piece after bos; raises if the chunk has none."""
    for i, p in enumerate(pieces[1:], start=1):
        if p == EOS_PIECE:
            return i
    raise ValueError(f"token sequence has no {EOS_PIECE} after position 0: {pieces[:8]}…")


def group_words(pieces: list[str], eos_index: int, embeddings: list[tuple[str, int]] | None = None) -> list[Word]:
    """Group the pieces between bos and eos into words.

    A word ends at a piece ending in ``</w>``. Embedding vectors (``<embedding>`` pieces) form words of their own:
    with ``embeddings`` — ``(name, vector count)`` in prompt order — each run of vectors becomes one word
    ``embedding:name``; without it (or if the counts do not line up) each vector is a word ``<embedding>``.
    Occurrences are counted per text, so the second "dog" is ``dog#2``.
    """
    words: list[Word] = []
    seen: dict[str, int] = {}
    current: list[int] = []
    runs = _embedding_runs(pieces, eos_index, embeddings)

    def close(text: str | None = None) -> None:
        if not current:
            return
        text = text or normalise(decode_pieces([pieces[i] for i in current]))
        seen[text] = seen.get(text, 0) + 1
        words.append(Word(text, tuple(current), seen[text]))
        current.clear()

    i = 1
    while i < eos_index:
        if pieces[i] == EMBEDDING_PIECE:
            close()
            name, count = runs.pop(0) if runs else (EMBEDDING_PIECE, 1)
            current.extend(range(i, i + count))
            close(name)
            i += count
            continue
        current.append(i)
        if pieces[i].endswith(WORD_END):
            close()
        i += 1
    close()
    return words


def _embedding_runs(pieces: list[str], eos_index: int, embeddings: list[tuple[str, int]] | None):
    """``[(label, count)]`` for the embedding vectors, or [] when the named counts do not match the pieces."""
    total = sum(1 for p in pieces[1:eos_index] if p == EMBEDDING_PIECE)
    if not embeddings or sum(n for _, n in embeddings) != total:
        return []
    return [(f"embedding:{name}".lower(), n) for name, n in embeddings]


_SPEC = re.compile(r"^(?P<text>.+?)(?:#(?P<occ>\d+))?$")


def resolve_words(spec: str, words: list[Word], input_name: str = "words") -> list[Word]:
    """Resolve a comma-separated user list such as ``"cat, dog#2"`` against the prompt's words.

    An empty (or blank) spec selects every prompt word. A spec that is not blank but names no word (``",,,"``), a
    word not in the prompt, or an occurrence that does not exist, raises ``ValueError`` naming the input, the bad
    entry and the prompt's words. Words are matched as decoded text (see :func:`decode_pieces`), NFC-normalised
    and lower-cased, so ``café`` finds the word the tokenizer wrote as ``cafÃ©``.
    """
    if not spec.strip():
        return list(words)
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    available = ", ".join(w.label for w in words) or "(none)"
    if not entries:
        raise ValueError(f"{input_name}: '{spec}' names no word; type words separated by commas (e.g. 'cat, dog'), "
                         f"or leave it empty. The prompt's words are: {available}")
    by_label = {(w.text, w.occurrence): w for w in words}
    out: list[Word] = []
    for entry in entries:
        m = _SPEC.match(normalise(entry))
        text, occ = m.group("text").strip(), int(m.group("occ") or 1)
        word = by_label.get((text, occ))
        if word is None:
            what = f"'{entry}' is not a word of the prompt" if occ == 1 else \
                f"'{entry}': the prompt has no occurrence {occ} of '{text}'"
            raise ValueError(f"{input_name}: {what}. The prompt's words are: {available}")
        if word not in out:
            out.append(word)
    return out


# -- SentencePiece (T5: Flux's context, the second part of SD3's) ----------------------------------------------------
#: T5's end and padding pieces; SentencePiece marks the start of a word with U+2581 and has no start token
SP_EOS_PIECE = "</s>"
SP_PAD_PIECE = "<pad>"
SP_WORD_START = "\u2581"


def sp_display(pieces: list[str] | tuple[str, ...]) -> str:
    """The text SentencePiece pieces spell: word-start marks become spaces (``["▁car", "s"]`` → ``"cars"``)."""
    return "".join(pieces).replace(SP_WORD_START, " ").strip()


def find_sp_eos(pieces: list[str]) -> int:
    """Index of T5's first ``</s>`` (the prompt is ``pieces[:eos]``); raises if there is none."""
    for i, p in enumerate(pieces):
        if p == SP_EOS_PIECE:
            return i
    raise ValueError(f"token sequence has no {SP_EOS_PIECE}: {pieces[:8]}…")


def _punctuation(piece: str) -> bool:
    text = piece.replace(SP_WORD_START, "")
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def group_sp_words(pieces: list[str], eos_index: int, *, offset: int = 0) -> list[Word]:
    """Group T5's pieces before ``</s>`` into words, positions shifted by ``offset`` (where T5's first token sits in
    the model's context: 0 for Flux, after the CLIP tokens for SD3).

    A word starts at a piece that begins with ``▁``; punctuation is a word of its own, as CLIP's tokenizer makes
    it (``"car,"`` → ``car``, ``,``), so ``car, bench`` names the same words on every encoder. A bare ``▁`` piece —
    T5 writes one before a word it spells from pieces that carry no ``▁`` of their own (``▁ gir af fe`` for
    "giraffe", ``▁ 2`` for "2"), whatever piece follows, a symbol included — starts the word after it but is not one
    of its positions: it carries none of the word's meaning (as gsn-factory, which leaves it out). A word of several
    pieces keeps all of them; the methods take the max over a word's pieces (gsn-factory averages them).
    """
    words: list[Word] = []
    seen: dict[str, int] = {}
    current: list[int] = []

    def close() -> None:
        text = normalise(sp_display([pieces[i] for i in current]))
        if text:
            seen[text] = seen.get(text, 0) + 1
            meaning = [i for i in current if pieces[i] != SP_WORD_START]              # a bare ▁ is no position
            words.append(Word(text, tuple(offset + i for i in meaning), seen[text]))
        current.clear()

    for i in range(eos_index):
        piece = pieces[i]
        bare_start = len(current) == 1 and pieces[current[0]] == SP_WORD_START
        starts = piece.startswith(SP_WORD_START) or _punctuation(piece) or \
            (current and _punctuation(pieces[current[-1]]))
        if current and starts and not bare_start:
            close()
        current.append(i)
    if current:
        close()
    return words
