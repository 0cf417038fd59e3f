"""SynGen's grouping from a dependency parse (used only when spaCy and an English model are installed).

Reimplements ``extract_attribution_indices``, ``…_with_verb_root`` and ``…_with_verbs`` of the official
``compute_loss.py`` on any parse whose tokens expose ``text``, ``dep_``, ``pos_``, ``i`` and ``children`` (spaCy's
``Token`` does; tests use small hand-built trees). One official bug is not reproduced: the verb extractor returns
inside its loop, so only the first noun was ever examined; here every noun is.
"""
from __future__ import annotations

from .grouping import Selection, unify
from .tokens import Word

MODIFIER_DEPS = ["amod", "nmod", "compound", "npadvmod", "advmod", "acomp"]


def _expand(stack: list, subtree: list, deps: list[str], skip_pos: tuple[str, ...]) -> None:
    while stack:
        node = stack.pop()
        if node.dep_ in deps or node.dep_ == "conj":
            if node.pos_ not in skip_pos:
                subtree.append(node)
            stack.extend(node.children)


def noun_subtrees(doc, deps: list[str] = MODIFIER_DEPS, skip_pos: tuple[str, ...] = ()) -> list[list]:
    """Each noun with its modifiers (official ``extract_attribution_indices``; with ``relcl`` in ``deps`` and
    ``skip_pos=('AUX', 'VERB')`` it is ``extract_attribution_indices_with_verbs``). The noun comes last."""
    subtrees = []
    for w in doc:
        if w.pos_ not in ("NOUN", "PROPN") or w.dep_ in deps:
            continue
        subtree, stack = [], []
        for child in w.children:
            if child.dep_ in deps:
                if child.pos_ not in skip_pos:
                    subtree.append(child)
                stack.extend(child.children)
        _expand(stack, subtree, deps, skip_pos)
        if subtree:
            subtrees.append(subtree + [w])
    return subtrees


def copula_subtrees(doc) -> list[list]:
    """"the dog is red" (official ``extract_attribution_indices_with_verb_root``): an AUX with a noun child and a
    modifier child; the AUX itself is left out, the noun put last."""
    subtrees = []
    for w in doc:
        if w.pos_ != "AUX" or w.dep_ in MODIFIER_DEPS:
            continue
        subtree, stack = [], []
        for child in w.children:
            if (child.dep_ in MODIFIER_DEPS or child.pos_ in ("NOUN", "PROPN")) and child.pos_ not in ("AUX", "VERB"):
                subtree.append(child)
                stack.extend(child.children)
        if len(subtree) < 2:
            continue
        _expand(stack, subtree, MODIFIER_DEPS, ("AUX",))
        # the official order puts the subject first; its loss is symmetric in the pair, so the noun goes last here
        subtrees.append([t for t in subtree if t.pos_ not in ("NOUN", "PROPN")]
                        + [t for t in subtree if t.pos_ in ("NOUN", "PROPN")])
    return subtrees


def parse_selection(doc, words: list[Word]) -> Selection:
    """Entities and groups from a parse of the prompt's words (``" ".join(word.text)``), aligned to those words.

    Parse tokens are matched to prompt words by text, in order, each word used once. Groups follow the official
    order of extractors and are unified; the noun of each group is its last element.
    """
    by_index = _align(doc, words)
    token_groups = (noun_subtrees(doc) + copula_subtrees(doc)
                    + noun_subtrees(doc, MODIFIER_DEPS + ["relcl"], ("AUX", "VERB")))
    groups = []
    for tokens in token_groups:
        group = [by_index[t.i] for t in tokens if t.i in by_index]
        if len(group) >= 2:
            groups.append(list(dict.fromkeys(group)))
    entities = [by_index[t.i] for t in doc
                if t.pos_ in ("NOUN", "PROPN") and t.dep_ not in MODIFIER_DEPS and t.i in by_index]
    return Selection(entities=entities, groups=unify(groups))


def _align(doc, words: list[Word]) -> dict[int, Word]:
    out, start = {}, 0
    for token in doc:
        for j in range(start, len(words)):
            if words[j].text == token.text.lower():
                out[token.i] = words[j]
                start = j + 1
                break
    return out
