"""Prompt sets for method comparisons: readers for the common file formats and the sets the pack can generate.

``read_prompt_set(spec)`` → ``list[PromptItem]``; ``spec`` is a file or a built-in set:

* ``*.jsonl`` — GenEval's ``evaluation_metadata.jsonl``: one JSON object per line with ``prompt`` and ``include``
  (``[{"class": "dog", "count": 1, "color": "red"}, …]``); the subjects are the included classes and the groups
  their colours, so the methods act on the words the benchmark checks. The line is kept (GenEval's output layout
  writes it back next to the images).
* any other file — one prompt per line (plain text, T2I-CompBench's ``color_val.txt`` etc.); blank lines skipped;
  the methods' automatic word selection applies.
* ``builtin:ae`` / ``builtin:ae_animals`` / ``builtin:ae_animal_object`` / ``builtin:ae_objects`` —
  Attend-and-Excite's templates ("a {animal} and a {animal}", "a {animal} and a {colour} {object}",
  "a {colour} {object} and a {colour} {object}") over its word lists (12 animals, 12 objects, 11 colours): every pair
  once (66 + 144 + 66 prompts); colours are drawn by a seeded generator, so a prompt's colour may differ from the
  official file, the pairs do not.
* ``builtin:dvmp[:N]`` — N prompts (default 200) in the style of SynGen's DVMP generator: 2–3 objects, each with
  0–2 visual modifiers (colour, material, pattern, size), joined by "and" / "with" / "next to"; seeded.
* ``builtin:toy`` — the toy benchmark's held-out prompts (``toy.scenes.evaluation_prompts``: 100 two-object and
  50 three-object), with their structure.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

AE_ANIMALS = ["cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit", "mouse"]
AE_OBJECTS = ["backpack", "glasses", "crown", "suitcase", "chair", "balloon", "bow", "car", "bowl", "bench", "clock",
              "apple"]
AE_COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white"]

DVMP_OBJECTS = AE_ANIMALS + AE_OBJECTS + ["table", "vase", "teapot", "umbrella", "guitar", "lamp", "book", "cup",
                                          "hat", "shoe", "box", "ball"]
DVMP_MODIFIERS = {
    "colour": AE_COLOURS,
    "material": ["wooden", "metal", "glass", "plastic", "leather", "stone", "golden", "paper"],
    "pattern": ["striped", "spotted", "checkered", "plaid", "floral"],
    "size": ["big", "small", "tiny", "huge"],
}
DVMP_JOINS = [" and ", " with ", " next to "]


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set: its index in the set, the text, typed words for the methods when the set has structure
    (empty strings: the methods' automatic mode), and the set's own metadata (e.g. GenEval's line)."""

    index: int
    text: str
    subjects: str = ""
    groups: str = ""
    meta: dict = field(default_factory=dict, compare=False)


class PromptSetError(ValueError):
    """A prompt set that cannot be read; the message names the file, the line and what is expected."""


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _occurrences(words: list[tuple[str, ...]]) -> list[list[str]]:
    """Typed labels for words in prompt order (``red#2`` for a second "red")."""
    seen: dict[str, int] = {}
    out = []
    for group in words:
        labels = []
        for w in group:
            seen[w] = seen.get(w, 0) + 1
            labels.append(w if seen[w] == 1 else f"{w}#{seen[w]}")
        out.append(labels)
    return out


def _item(index: int, text: str, objects: list[tuple[list[str], str]], meta: dict | None = None) -> PromptItem:
    """An item whose objects are (modifiers, noun) in prompt order."""
    labelled = _occurrences([(*mods, noun) for mods, noun in objects])
    subjects = ", ".join(g[-1] for g in labelled)
    groups = "; ".join(" ".join(g) for g in labelled if len(g) > 1)
    return PromptItem(index, text, subjects, groups, meta or {})


def attend_excite_set(name: str = "ae", *, seed: int = 0) -> list[PromptItem]:
    rng = random.Random(seed)
    items: list[tuple[str, list]] = []
    if name in ("ae", "ae_animals"):
        items += [(f"a {a} and a {b}", [([], a), ([], b)]) for a, b in combinations(AE_ANIMALS, 2)]
    if name in ("ae", "ae_animal_object"):
        for a, o in product(AE_ANIMALS, AE_OBJECTS):
            c = rng.choice(AE_COLOURS)
            items.append((f"{_article(a)} {a} and a {c} {o}", [([], a), ([c], o)]))
    if name in ("ae", "ae_objects"):
        for o1, o2 in combinations(AE_OBJECTS, 2):
            c1, c2 = rng.choice(AE_COLOURS), rng.choice(AE_COLOURS)
            items.append((f"a {c1} {o1} and a {c2} {o2}", [([c1], o1), ([c2], o2)]))
    if not items:
        raise PromptSetError(f"builtin:{name}: unknown Attend-and-Excite subset; use ae, ae_animals, "
                             "ae_animal_object or ae_objects")
    return [_item(i, text, objs) for i, (text, objs) in enumerate(items)]


def dvmp_set(n: int = 200, *, seed: int = 0) -> list[PromptItem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        nouns = rng.sample(DVMP_OBJECTS, rng.choice([2, 3]))
        objects, parts = [], []
        for noun in nouns:
            kinds = rng.sample(sorted(DVMP_MODIFIERS), rng.choice([0, 1, 1, 2]))
            mods = [rng.choice(DVMP_MODIFIERS[k]) for k in sorted(kinds, key=["size", "pattern", "material",
                                                                            "colour"].index)]
            objects.append((mods, noun))
            phrase = " ".join([*mods, noun])
            parts.append(f"{_article(phrase)} {phrase}")
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(DVMP_JOINS) + part
        out.append(_item(i, text, objects))
    return out


def toy_set() -> list[PromptItem]:
    import headless  # noqa: F401  (makes the repository's toy package importable)

    from toy.model import SHIPPED_FILE, world_of
    from toy.scenes import WORLDS, evaluation_prompts, typed_words

    out = []
    for i, p in enumerate(evaluation_prompts(split=WORLDS[world_of(SHIPPED_FILE)].split)):   # the shipped model's
        words = typed_words(p)
        out.append(PromptItem(i, p.caption, words["subjects"], words["groups"],
                              {"mentions": [[m.shape, m.colour] for m in p.mentions], "kind": p.kind}))
    return out


def read_geneval(path: Path) -> list[PromptItem]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
            text = meta["prompt"]
            include = meta.get("include", [])
            assert isinstance(text, str) and text.strip() and isinstance(include, list)
            # a class of several words ("traffic light") is named by its last word, the noun the methods act on
            objects = [([inc["color"]] if inc.get("color") else [], str(inc["class"]).split()[-1]) for inc in include]
        except Exception as exc:  # noqa: BLE001  (any malformed line is the same user error)
            raise PromptSetError(f"{path}:{n}: not a GenEval metadata line (a JSON object with a 'prompt' string "
                                 f"and an 'include' list of {{'class', 'count', 'color'?}}): {exc}") from exc
        words = set(re.findall(r"[a-z]+", text.lower()))
        typed = objects and all(noun in words and all(m in words for m in mods) for mods, noun in objects)
        # a class the prompt names otherwise ("three dogs" for class "dog") is left to the automatic mode
        item = _item(len(out), text, objects, meta) if typed else PromptItem(len(out), text, meta=meta)
        out.append(item)
    return out


def read_lines(path: Path) -> list[PromptItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not a UTF-8 text file with one prompt per line ({exc})") from exc
    out = [PromptItem(i, text) for i, text in enumerate(t.strip() for t in lines if t.strip())]
    if not out:
        raise PromptSetError(f"{path}: no prompt in it (one prompt per line expected)")
    return out


def read_prompt_set(spec: str, *, seed: int = 0) -> list[PromptItem]:
    """The prompts of a file or a built-in set (see the module docstring)."""
    if spec.startswith("builtin:"):
        name, _, arg = spec[len("builtin:"):].partition(":")
        if name.startswith("ae"):
            return attend_excite_set(name, seed=seed)
        if name == "dvmp":
            try:
                n = int(arg) if arg else 200
                assert n > 0
            except (ValueError, AssertionError):
                raise PromptSetError(f"{spec}: the count after 'dvmp:' must be a positive integer") from None
            return dvmp_set(n, seed=seed)
        if name == "toy":
            return toy_set()
        raise PromptSetError(f"{spec}: unknown built-in set; use builtin:ae, builtin:ae_animals, "
                             "builtin:ae_animal_object, builtin:ae_objects, builtin:dvmp[:N] or builtin:toy")
    path = Path(spec)
    if not path.is_file():
        raise PromptSetError(f"{spec}: no such file (give a prompt file or builtin:<set>)")
    return read_geneval(path) if path.suffix == ".jsonl" else read_lines(path)
