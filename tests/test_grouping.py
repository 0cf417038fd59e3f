"""Token selection: automatic entities/groups on hand-labelled prompts, attention-based attachment, user specs."""
import re

import pytest
import torch
from attention_align.guidance.grouping import auto_groups, parse_groups, parse_subjects, unify
from attention_align.guidance.tokens import Word


def words_of(prompt: str) -> list[Word]:
    """Words as group_words would give them (one token each here; positions from 1), punctuation separate."""
    seen, out = {}, []
    for i, text in enumerate(re.findall(r"[\w-]+|[^\w\s]", prompt.lower()), start=1):
        seen[text] = seen.get(text, 0) + 1
        out.append(Word(text, (i,), seen[text]))
    return out


def labels(groups):
    return [" ".join(w.label for w in g) for g in groups]


CASES = [
    ("a red car and a blue bench", ["red car", "blue bench"], "car, bench"),
    ("a checkered bowl on a red and blue table", ["checkered bowl", "red blue table"], "bowl, table"),
    ("a horned lion and a spotted monkey", ["horned lion", "spotted monkey"], "lion, monkey"),
    ("a black cat and a white dog", ["black cat", "white dog"], "cat, dog"),
    ("a wooden chair next to a metal table", ["wooden chair", "metal table"], "chair, table"),
    ("a yellow bird sitting on a green branch", ["yellow bird", "green branch"], "bird, branch"),
    ("the dog is red", ["red dog"], "dog"),
    ("a dog that is red", ["red dog"], "dog"),
    ("a very tall tree", ["very tall tree"], "tree"),
    ("a cat and a dog", [], "cat, dog"),
    ("a small brown rabbit in a large green field", ["small brown rabbit", "large green field"], "rabbit, field"),
    ("a striped shirt and plaid pants", ["striped shirt", "plaid pants"], "shirt, pants"),
    ("a glass vase with pink flowers", ["glass vase", "pink flowers"], "vase, flowers"),
    ("a purple elephant and an orange giraffe", ["purple elephant", "orange giraffe"], "elephant, giraffe"),
    ("two red apples on a silver plate", ["red apples", "silver plate"], "apples, plate"),
    ("a fluffy white cat sleeping on a blue sofa", ["fluffy white cat", "blue sofa"], "cat, sofa"),
    ("a golden crown and a rusty sword", ["golden crown", "rusty sword"], "crown, sword"),
    ("a red car and a red bench", ["red car", "red#2 bench"], "car, bench"),
    ("a bright red balloon above a dark green house", ["bright red balloon", "dark green house"], "balloon, house"),
    ("a shiny metallic robot holding a wooden stick", ["shiny metallic robot", "wooden stick"], "robot, stick"),
    ("a pink teddy bear next to a coffee mug", ["pink teddy bear", "coffee mug"], "bear, mug"),
    ("an old man with a long white beard", ["old man", "long white beard"], "man, beard"),
    ("a blue and yellow striped umbrella", ["blue yellow striped umbrella"], "umbrella"),
    ("a cat wearing a red hat and a dog wearing blue shoes", ["red hat", "blue shoes"], "cat, hat, dog, shoes"),
    ("an orange and a banana on a white plate", ["white plate"], "orange, banana, plate"),
    ("a car, red and shiny", ["red shiny car"], "car"),
]


@pytest.mark.parametrize("prompt, groups, subjects", CASES, ids=[c[0] for c in CASES])
def test_automatic_groups_on_hand_labelled_prompts(prompt, groups, subjects):
    sel = auto_groups(words_of(prompt))
    assert labels(sel.groups) == groups
    assert ", ".join(w.label for w in sel.entities) == subjects


def test_postnominal_modifiers_bind_to_the_noun_that_attention_prefers():
    """'the car next to the bench is red': two candidate nouns; the text attention decides, not the distance."""
    words = words_of("the car next to the bench is red")     # the1 car2 next3 to4 the5 bench6 is7 red8
    attention = torch.zeros(9, 9)
    attention[8, 2], attention[8, 6] = 0.30, 0.10             # "red" attends to "car" more than to "bench"
    assert labels(auto_groups(words, attention).groups) == ["red car"]
    attention[8, 2], attention[8, 6] = 0.10, 0.30
    assert labels(auto_groups(words, attention).groups) == ["red bench"]
    assert labels(auto_groups(words, None).groups) == ["red bench"]      # no attention: the nearest noun


def test_describe_lists_positions():
    sel = auto_groups(words_of("a red car"))
    assert sel.describe() == "subjects: car[3]\ngroups: red[2] car[3]"


def test_user_specs_resolve_words_and_merge_shared_words():
    words = words_of("a red car and a red bench near a blue car")
    assert labels(parse_groups("red car; red#2 bench", words)) == ["red car", "red#2 bench"]
    assert labels(parse_groups("red and blue car#2", words)) == ["red blue car#2"]
    assert labels(parse_groups("red car; blue car", words)) == ["red blue car"]            # shares 'car'
    assert [w.label for w in parse_subjects("car, bench, car#2", words)] == ["car", "bench", "car#2"]
    with pytest.raises(ValueError, match="groups: 'dog' is not a word of the prompt"):
        parse_groups("red dog", words)
    with pytest.raises(ValueError, match="groups: ' ; ' names no group"):
        parse_groups(" ; ", words)
    with pytest.raises(ValueError, match="subjects: empty"):
        parse_subjects("", words)
    with pytest.raises(ValueError, match="names the same word twice"):
        parse_groups("red red car", words)


@pytest.mark.parametrize("spec", [",,,", " , "])
def test_a_typed_list_with_no_words_is_an_error_not_every_word(spec):
    words = words_of("a red car and a blue bench")
    with pytest.raises(ValueError, match="subjects: '.*' names no word"):
        parse_subjects(spec, words)


@pytest.mark.parametrize("spec, group", [("red;", "red"), ("red car; blue", "blue"), ("red and ; blue bench", "red and")])
def test_a_one_word_group_is_refused_for_binding(spec, group):
    words = words_of("a red car and a blue bench")
    with pytest.raises(ValueError, match=f"groups: '{group}' is a group of 1 word; a group needs at least 2"):
        parse_groups(spec, words)


def test_a_one_word_entity_is_a_bare_noun_when_allowed():
    words = words_of("a cat and a red car")
    assert labels(parse_groups("cat; red car", words, min_words=1)) == ["cat", "red car"]


def test_unify_keeps_the_first_noun_last():
    a, b, c, d = (Word(t, (i,), 1) for i, t in enumerate("abcd", 1))
    assert unify([[a, b], [c, b], [d]]) == [[a, c, b], [d]]
