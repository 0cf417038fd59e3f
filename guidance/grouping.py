"""Which tokens a method acts on: user word lists, and an automatic mode that needs no external parser.

* :func:`parse_subjects` — Attend-and-Excite subjects typed as words, ``"cat, dog#2"``.
* :func:`parse_groups` — SynGen groups typed as words, ``"red car; blue bench"`` (modifiers first, the noun last;
  "and"/"or" inside a group are ignored, so ``"red and blue table"`` works).
* :func:`auto_groups` — entities and modifier groups found from the prompt itself: a small lexicon gives each word a
  role (see :mod:`.lexicon`), prenominal modifiers (adjectives, compounds, "red and blue") attach to the noun they
  precede, and a modifier that follows its noun ("the dog is red", "a dog that is red", "a car, red and shiny")
  attaches to the earlier noun it attends to most in the text encoder's self-attention — the binding T-SAM relies
  on (causal attention runs from the later token to the earlier one); the nearest noun breaks ties.

Groups that share a token are merged, as SynGen's ``unify_lists`` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lexicon import COORDINATORS, role
from .tokens import Word, resolve_words

DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "another", "each", "every", "my", "your",
               "his", "her", "its", "our", "their"}


@dataclass
class Selection:
    """Entities (Attend-and-Excite subjects) and modifier groups (SynGen) of a prompt, as prompt words."""

    entities: list[Word]
    groups: list[list[Word]]          # each: modifiers first, the noun last

    @staticmethod
    def _fmt(word: Word) -> str:
        return f"{word.label}[{','.join(map(str, word.positions))}]"

    def subjects_text(self) -> str:
        """``car[3], bench[7]``: the entities with their token positions."""
        return ", ".join(self._fmt(w) for w in self.entities) or "(none)"

    def groups_text(self) -> str:
        """``red[2] car[3]; blue[6] bench[7]``: the groups with their token positions."""
        return "; ".join(" ".join(self._fmt(w) for w in g) for g in self.groups) or "(none)"

    def describe(self) -> str:
        return f"subjects: {self.subjects_text()}\ngroups: {self.groups_text()}"


def word_role(word: Word) -> str:
    if word.text.startswith(("<embedding>", "embedding:")):
        return "noun"
    return role(word.text)


def _score(attention: torch.Tensor | None, later: Word, earlier: Word) -> float:
    """How much the later word attends to the earlier one (max over their pieces); 0 without attention."""
    if attention is None:
        return 0.0
    return float(attention[list(later.positions)][:, list(earlier.positions)].max())


def auto_groups(words: list[Word], attention: torch.Tensor | None = None) -> Selection:
    """Entities and modifier groups from the prompt's words; ``attention`` is the ``[T, T]`` text self-attention
    (mean over heads and layers), used to attach postnominal and predicative modifiers."""
    roles = [word_role(w) for w in words]
    heads: list[Word] = []
    modifiers: dict[Word, list[Word]] = {}
    pending: list[Word] = []
    pending_after_determiner = False

    def next_content(i: int) -> str | None:
        for j in range(i + 1, len(words)):
            if roles[j] not in ("function", "punct") and words[j].text not in COORDINATORS:
                return roles[j]
        return None

    def flush_dangling() -> None:
        nonlocal pending, pending_after_determiner
        if not pending:
            return
        if pending_after_determiner or not heads:
            head, mods = pending[-1], pending[:-1]        # "an orange": a modifier word used as a noun
            heads.append(head)
            modifiers[head] = list(mods)
        else:
            for m in pending:                              # postnominal / predicative: bind to an earlier noun
                target = max(reversed(heads), key=lambda h: _score(attention, m, h))
                modifiers[target].append(m)
        pending, pending_after_determiner = [], False

    for i, (w, r) in enumerate(zip(words, roles)):
        if r == "modifier":
            if not pending:
                pending_after_determiner = i > 0 and words[i - 1].text in DETERMINERS
            pending.append(w)
        elif r == "noun":
            if i + 1 < len(words) and roles[i + 1] == "noun":
                pending.append(w)                          # compound: "teddy bear", "coffee mug"
                continue
            heads.append(w)
            modifiers[w] = list(pending)
            pending, pending_after_determiner = [], False
        elif w.text in COORDINATORS and pending and next_content(i) == "modifier":
            continue                                       # "red and blue table"
        else:
            flush_dangling()
    flush_dangling()
    groups = [modifiers[h] + [h] for h in heads if modifiers[h]]
    return Selection(entities=heads, groups=unify(groups))


def unify(groups: list[list[Word]]) -> list[list[Word]]:
    """Merge groups that share a word, keeping the first group's order and its noun last (SynGen's unify_lists)."""
    merged: list[list[Word]] = []
    for group in groups:
        for existing in merged:
            if set(existing) & set(group):
                noun = existing[-1]
                existing[:] = [w for w in existing[:-1]] + [w for w in group if w not in existing] + [noun]
                break
        else:
            merged.append(list(group))
    return merged


def parse_subjects(spec: str, words: list[Word], input_name: str = "subjects") -> list[Word]:
    """Subjects typed as comma-separated words (``"cat, dog#2"``); every word must be in the prompt."""
    chosen = resolve_words(spec, words, input_name)
    if not spec.strip():
        raise ValueError(f"{input_name}: empty; type words such as 'cat, dog' or use the automatic mode")
    return chosen


def parse_groups(spec: str, words: list[Word], input_name: str = "groups", *, min_words: int = 2) -> list[list[Word]]:
    """Groups typed as ``"red car; blue bench"``: ';' separates groups, the last word of each is its noun.

    ``min_words``: SynGen's groups bind modifiers to a noun, so a group needs at least two words (the default);
    Attention Modulation's entities may be a bare noun (``min_words=1``). A spec that names no group is an error.
    """
    groups = []
    for part in spec.split(";"):
        entries = [e for e in part.replace(",", " ").split() if e.lower() not in COORDINATORS]
        if not entries:
            continue
        group = [resolve_words(entry, words, input_name)[0] for entry in entries]
        if len(set(group)) != len(group):
            raise ValueError(f"{input_name}: '{part.strip()}' names the same word twice")
        if len(group) < min_words:
            raise ValueError(f"{input_name}: '{part.strip()}' is a group of {len(group)} word; a group needs at "
                             f"least {min_words} (its modifiers, then the noun they belong to), e.g. 'red car; blue "
                             "bench'")
        groups.append(group)
    if not groups:
        what = "empty" if not spec.strip() else f"'{spec}' names no group"
        raise ValueError(f"{input_name}: {what}; type groups such as 'red car; blue bench', or leave it empty for "
                         "the automatic mode")
    return unify(groups)
