"""Word ↔ token-position mapping on decoded BPE pieces (no ComfyUI needed)."""
import unicodedata

import pytest
from attention_align.guidance.tokens import (
    EMBEDDING_PIECE,
    decode_pieces,
    display_piece,
    find_eos,
    group_words,
    resolve_words,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PIECES = [BOS, "a</w>", "check", "ered</w>", "bowl</w>", "and</w>", "a</w>", "dog</w>", ",</w>", "dog</w>", EOS, EOS]


def test_groups_multi_piece_words_and_counts_occurrences():
    words = group_words(PIECES, find_eos(PIECES))
    assert [(w.label, w.positions) for w in words] == [
        ("a", (1,)), ("checkered", (2, 3)), ("bowl", (4,)), ("and", (5,)), ("a#2", (6,)),
        ("dog", (7,)), (",", (8,)), ("dog#2", (9,))]


def test_embedding_vectors_are_words_of_their_own():
    pieces = [BOS, "a</w>", EMBEDDING_PIECE, EMBEDDING_PIECE, "cat</w>", EOS]
    words = group_words(pieces, 5)
    assert [(w.label, w.positions) for w in words] == [
        ("a", (1,)), ("<embedding>", (2,)), ("<embedding>#2", (3,)), ("cat", (4,))]


def test_resolve_words_by_text_and_occurrence():
    words = group_words(PIECES, find_eos(PIECES))
    got = resolve_words(" Checkered , dog#2,dog", words)
    assert [(w.label, w.positions) for w in got] == [("checkered", (2, 3)), ("dog#2", (9,)), ("dog", (7,))]
    assert resolve_words("", words) == words


@pytest.mark.parametrize("spec, message", [
    ("cat", "'cat' is not a word of the prompt"),
    ("dog#3", "no occurrence 3 of 'dog'"),
])
def test_unknown_words_name_the_input_and_list_the_prompt(spec, message):
    words = group_words(PIECES, find_eos(PIECES))
    with pytest.raises(ValueError) as err:
        resolve_words(spec, words, input_name="subjects")
    text = str(err.value)
    assert text.startswith("subjects:") and message in text
    assert "a, checkered, bowl, and, a#2, dog, ,, dog#2" in text


def test_missing_eos_is_an_error():
    with pytest.raises(ValueError, match="no <\\|endoftext\\|>"):
        find_eos([BOS, "a</w>"])


def test_named_embeddings_become_one_word_each():
    pieces = [BOS, "a</w>", EMBEDDING_PIECE, EMBEDDING_PIECE, "cat</w>", EMBEDDING_PIECE, EOS]
    words = group_words(pieces, 6, embeddings=[("MyStyle", 2), ("shiny", 1)])
    assert [(w.label, w.positions) for w in words] == [
        ("a", (1,)), ("embedding:mystyle", (2, 3)), ("cat", (4,)), ("embedding:shiny", (5,))]
    # counts that do not match the pieces fall back to one anonymous word per vector
    assert [w.label for w in group_words(pieces, 6, embeddings=[("x", 1)])] == [
        "a", "<embedding>", "<embedding>#2", "cat", "<embedding>#3"]


# Byte-level BPE pieces written out by hand from UTF-8: é = C3 A9 → "Ã©"; 🐶 = F0 9F 90 B6, where 0x9F and 0x90
# are not printable Latin-1 and stand for U+0141 "Ł" and U+0132 "Ĳ" in the byte table; ü = C3 BC → "Ã¼".
NON_ASCII = [BOS, "a</w>", "cafÃ©</w>", "and</w>", "a</w>", "ðŁĲ¶</w>", "mÃ¼", "nchen</w>", EOS]


def test_non_ascii_pieces_decode_to_the_text_typed():
    assert decode_pieces(["cafÃ©</w>"]) == "café"
    assert decode_pieces(["ðŁĲ¶</w>"]) == "\N{DOG FACE}"
    assert decode_pieces(["mÃ¼", "nchen</w>"]) == "münchen"
    assert display_piece("red</w>") == "red" and display_piece(EOS) == EOS
    assert decode_pieces(["Ã"]) == "\ufffd"                   # half of a two-byte character, shown alone


def test_non_ascii_words_are_addressed_by_their_text():
    words = group_words(NON_ASCII, find_eos(NON_ASCII))
    assert [w.label for w in words] == ["a", "café", "and", "a#2", "\N{DOG FACE}", "münchen"]
    decomposed = unicodedata.normalize("NFD", "Café")             # e + combining acute, as some keyboards type it
    assert [w.positions for w in resolve_words(f"{decomposed}, \N{DOG FACE}, MÜNCHEN", words)] == [(2,), (5,), (6, 7)]


@pytest.mark.parametrize("spec", [",,,", " ,", ", ,"])
def test_a_list_that_names_no_word_is_an_error(spec):
    words = group_words(PIECES, find_eos(PIECES))
    with pytest.raises(ValueError, match="words: '.*' names no word"):
        resolve_words(spec, words)
    assert resolve_words("   ", words) == words                    # blank is "every word", as documented
