"""Resolving the words a method acts on: typed by the user, or found automatically (built-in rules or spaCy)."""
from __future__ import annotations

import torch

from ...guidance.dependency import parse_selection
from ...guidance.grouping import Selection, auto_groups, parse_groups, parse_subjects
from ...guidance.text_attention import TextAttention
from ...guidance.tokens import Word
from .spacy_parser import PREFIX as SPACY_PREFIX
from .spacy_parser import load as load_spacy
from .spacy_parser import parser_options

PARSERS = parser_options()


class NothingFound(ValueError):
    """The automatic mode found no subject / no group in the prompt."""


def automatic(ta: TextAttention, parser: str) -> Selection:
    if parser == "builtin":
        attention = ta.mean_attention()                  # [T, T] of the encoder; words carry context positions
        if ta.offset:
            attention = torch.nn.functional.pad(attention, (ta.offset, 0, ta.offset, 0))
        return auto_groups(ta.words, attention)
    if parser == "spacy" or parser.startswith(SPACY_PREFIX):
        return parse_selection(load_spacy(parser)(" ".join(w.text for w in ta.words)), ta.words)
    raise ValueError(f"parser: '{parser}' is not one of {', '.join(PARSERS)}")


def in_twin(ta: TextAttention, words: list[Word], input_name: str) -> list[Word]:
    """The same words in the context's other encoder (``ta.twin``, SD3), matched by label (text and occurrence)."""
    by_label = {w.label: w for w in ta.twin.words}
    missing = [w.label for w in words if w.label not in by_label]
    if missing:
        raise ValueError(f"{input_name}: {', '.join(missing)} is not a word of {ta.twin.encoder}'s reading of the "
                         f"prompt (its words: {', '.join(w.label for w in ta.twin.words)}); use encoders = "
                         "text_attention")
    return [by_label[w.label] for w in words]


def subjects_for(ta: TextAttention, spec: str, parser: str, input_name: str = "subjects") -> tuple[list[Word], str]:
    """Attend-and-Excite subjects (or Attention Regulation's targets) and a description of them; errors and the
    description name ``input_name``."""
    if spec.strip():
        words = parse_subjects(spec, ta.words, input_name)
        return words, f"{input_name}: " + Selection(words, []).subjects_text()
    sel = automatic(ta, parser)
    if not sel.entities:
        raise NothingFound(f"{input_name}: no nouns were found automatically in '{ta.prompt}'; type the words, "
                           "e.g. 'cat, dog'")
    return sel.entities, f"{input_name} ({parser}): " + sel.subjects_text()


def groups_for(ta: TextAttention, spec: str, parser: str, input_name: str = "groups", *,
               min_words: int = 2) -> tuple[list[list[Word]], str]:
    """SynGen groups (modifiers first, noun last) and a description of them; errors and the description name
    ``input_name``. Typed groups need ``min_words`` words each."""
    if spec.strip():
        groups = parse_groups(spec, ta.words, input_name, min_words=min_words)
        return groups, f"{input_name}: " + Selection([], groups).groups_text()
    sel = automatic(ta, parser)
    if not sel.groups:
        raise NothingFound(f"{input_name}: no modifier–noun pairs were found automatically in '{ta.prompt}'; type "
                           "them, e.g. 'red car; blue bench'")
    return sel.groups, f"{input_name} ({parser}): " + sel.groups_text()


def entities_for(ta: TextAttention, spec: str, parser: str, input_name: str = "entities") -> tuple[list[list[Word]], str]:
    """Attention Modulation's entity groups (modifiers first, noun last) and a description of them.

    Typed: SynGen's group syntax, where a one-word group is a bare noun (an entity without attributes: ``cat; red
    car``). Automatic: every entity noun, with its modifiers when the noun heads a group (a bare noun is a group of
    one)."""
    if spec.strip():
        return groups_for(ta, spec, parser, input_name, min_words=1)
    sel = automatic(ta, parser)
    by_head = {g[-1]: g for g in sel.groups}
    groups = [by_head.get(head, [head]) for head in sel.entities]
    listed = "; ".join(" ".join(w.label for w in g) for g in groups) or "none found"
    return groups, f"{input_name} ({parser}): {listed}"
