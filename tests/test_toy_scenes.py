"""toy.scenes: determinism, the held-out split, captions (grammar, CLIP tokens) and rendering geometry."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from conftest import comfyui, missing

from toy import scenes
from toy.scenes import (
    BACKGROUND,
    COLOURS,
    DEFAULT_SPLIT,
    PALETTE,
    SHAPES,
    Mention,
    Obj,
    Scene,
    SceneConfig,
    caption_for,
    coverage,
    evaluation_prompts,
    parse_caption,
    render_array,
    training_sample,
    training_samples,
)

# The split written out by hand, independent of the Split defaults.
HELD_COLOUR_SHAPES = {("red", "square"), ("green", "circle"), ("blue", "triangle"), ("yellow", "star"),
                      ("purple", "cross"), ("orange", "heart"), ("white", "circle")}
HELD_SHAPE_PAIRS = {frozenset(p) for p in (("circle", "star"), ("square", "heart"), ("triangle", "cross"))}


@pytest.fixture(scope="module")
def samples():
    return [training_sample(i, seed=3) for i in range(1500)]


def test_same_seed_and_index_give_the_same_sample_in_any_order():
    a = [training_sample(i, seed=7) for i in (5, 2, 9)]
    b = {s.caption: s for s in training_samples(seed=7, count=10)}
    for s in a:
        twin = b[s.caption]
        assert twin.scene == s.scene
        assert np.array_equal(np.asarray(twin.image), np.asarray(s.image))
    other = [training_sample(i, seed=8) for i in (5, 2, 9)]
    assert [s.scene for s in other] != [s.scene for s in a]


def test_held_out_combinations_never_appear_in_training(samples):
    seen_pairs, seen_shape_pairs = set(), set()
    for s in samples:
        objs = s.scene.objects
        assert 1 <= len(objs) <= 3
        assert len({o.shape for o in objs}) == len(objs)
        for o in objs:
            assert (o.colour, o.shape) not in HELD_COLOUR_SHAPES
            seen_pairs.add((o.colour, o.shape))
        for a, b in itertools.combinations(objs, 2):
            assert frozenset({a.shape, b.shape}) not in HELD_SHAPE_PAIRS
            seen_shape_pairs.add(frozenset({a.shape, b.shape}))
    # Everything not held out does appear: the split removes exactly those combinations.
    assert seen_pairs == set(itertools.product(COLOURS, SHAPES)) - HELD_COLOUR_SHAPES
    assert seen_shape_pairs == {frozenset(p) for p in itertools.combinations(SHAPES, 2)} - HELD_SHAPE_PAIRS
    counts = np.bincount([len(s.scene.objects) for s in samples], minlength=4)[1:] / len(samples)
    assert np.allclose(counts, [0.2, 0.4, 0.4], atol=0.05)


def test_training_captions_describe_their_scene(samples):
    forms = {"colourless": 0, "coloured": 0}
    for s in samples:
        mentions = parse_caption(s.caption)
        assert mentions == s.prompt.mentions
        by_shape = {o.shape: o.colour for o in s.scene.objects}
        assert sorted(m.shape for m in mentions) == sorted(by_shape)
        for m in mentions:
            assert m.colour in (None, by_shape[m.shape])
            forms["colourless" if m.colour is None else "coloured"] += 1
    share = forms["colourless"] / sum(forms.values())
    assert 0.06 < share < 0.14                                     # SceneConfig.colourless = 0.1


@pytest.mark.parametrize("caption, expected", [
    ("a red circle", [("circle", "red")]),
    ("a square that is blue and a circle", [("square", "blue"), ("circle", None)]),
    ("a blue square next to a red circle", [("square", "blue"), ("circle", "red")]),
    ("an orange star, a heart and a cross that is white", [("star", "orange"), ("heart", None), ("cross", "white")]),
    ("a triangle next to a purple heart and a star", [("triangle", None), ("heart", "purple"), ("star", None)]),
])
def test_parse_caption_by_hand(caption, expected):
    assert parse_caption(caption) == tuple(Mention(shape=s, colour=c) for s, c in expected)


@pytest.mark.parametrize("caption", ["a big circle", "a red hexagon", "two circles", "a circle that is teal", ""])
def test_parse_caption_refuses_what_is_not_a_mention(caption):
    with pytest.raises(ValueError, match="is not a mention"):
        parse_caption(caption)


def test_caption_forms_and_templates():
    m = (Mention("square", "blue"), Mention("circle", "red"))
    assert caption_for(m, template=0, forms=["adjective", "adjective"]) == "a blue square and a red circle"
    assert caption_for(m, template=1, forms=["relative", "colourless"]) == "a square that is blue next to a circle"
    assert caption_for((Mention("star", "orange"),), template=0, forms=["adjective"]) == "an orange star"
    with pytest.raises(ValueError, match="template must be 0..1"):
        caption_for(m, template=2, forms=["adjective", "adjective"])


def test_evaluation_prompts_are_unseen_distinct_and_deterministic():
    prompts = evaluation_prompts(n_two=100, n_three=50, seed=0)
    assert prompts == evaluation_prompts(n_two=100, n_three=50, seed=0)
    assert [p.caption for p in prompts] != [p.caption for p in evaluation_prompts(seed=1)]
    assert [len(p.mentions) for p in prompts] == [2] * 100 + [3] * 50
    combos = {frozenset(p.mentions) for p in prompts}
    assert len(combos) == 150
    kinds = {"colour-shape": 0, "shape-pair": 0}
    for p in prompts:
        assert parse_caption(p.caption) == p.mentions
        assert all(m.colour is not None for m in p.mentions)
        held_cs = any((m.colour, m.shape) in HELD_COLOUR_SHAPES for m in p.mentions)
        held_sp = any(frozenset({a.shape, b.shape}) in HELD_SHAPE_PAIRS
                      for a, b in itertools.combinations(p.mentions, 2))
        assert held_cs or held_sp
        kinds["colour-shape"] += held_cs
        kinds["shape-pair"] += held_sp
        assert p.kind == "+".join(k for k, v in (("colour-shape", held_cs), ("shape-pair", held_sp)) if v)
    assert kinds["colour-shape"] >= 75 and kinds["shape-pair"] >= 75


def test_captions_are_single_clip_tokens_per_word(samples):
    vocab_dir = comfyui() / "comfy" / "sd1_tokenizer"                # the CLIP tokenizer files ComfyUI ships
    vocab = json.loads((vocab_dir / "vocab.json").read_text())
    words = set(COLOURS) | set(SHAPES) | {"a", "an", "and", "next", "to", "that", "is"}
    assert all(w + "</w>" in vocab for w in words)
    try:
        import transformers
    except ImportError:
        missing("needs transformers (ComfyUI's requirements bring it)")
    tok = transformers.CLIPTokenizer.from_pretrained(str(vocab_dir))
    captions = [s.caption for s in samples[:300]] + [p.caption for p in evaluation_prompts()]
    longest = 0
    for c in captions:
        ids = tok(c)["input_ids"][1:-1]                              # drop bos / eos
        assert len(ids) == len(c.replace(",", " ,").split()), c      # one token per word and comma
        longest = max(longest, len(ids))
    assert longest <= 24


def test_render_geometry_against_the_polygon():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        obj = Obj(shape=shape, colour="red", centre=(30.3 + rng.random(), 33.1), size=9.0, rotation=17.0)
        cov = coverage(obj, image_size=64)
        poly = np.asarray(obj.polygon())
        shoelace = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], -1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], -1)))
        assert cov.sum() == pytest.approx(shoelace, rel=0.03)
        ys, xs = np.mgrid[0:64, 0:64] + 0.5
        cx, cy = (cov * xs).sum() / cov.sum(), (cov * ys).sum() / cov.sum()
        px, py = poly.mean(0) if shape in ("circle", "square", "cross", "star", "triangle") else (cx, cy)
        assert math.dist((cx, cy), (px, py)) < 0.3
    circle = coverage(Obj(shape="circle", colour="red", centre=(32, 32), size=10.0), image_size=64)
    assert circle.sum() == pytest.approx(math.pi * 100, rel=0.01)


def test_render_colours_are_mixtures_of_background_and_palette():
    scene = Scene(objects=(Obj(shape="star", colour="orange", centre=(20, 20), size=9),
                           Obj(shape="heart", colour="blue", centre=(45, 44), size=9)))
    img = render_array(scene).astype(float)
    assert img.shape == (64, 64, 3)
    assert (img[0, 0] == BACKGROUND).all()
    bg = np.asarray(BACKGROUND, float)
    for obj in scene.objects:
        a = coverage(obj, image_size=64)
        expected = bg + a[..., None] * (np.asarray(PALETTE[obj.colour], float) - bg)
        inside = a > 0
        assert np.abs(img[inside] - expected[inside]).max() <= 0.5 + 1e-9
        assert 0 < a[inside].min() < 0.5 < a.max() == 1.0               # soft edges and a solid core


def test_objects_never_overlap_and_stay_inside():
    rng = np.random.default_rng(1)
    config = SceneConfig()
    for _ in range(150):
        scene = scenes.random_scene(rng, config=config, count=3)
        covs = [coverage(o, image_size=64) for o in scene.objects]
        for o, cov in zip(scene.objects, covs):
            poly = np.asarray(o.polygon())
            assert poly.min() >= 0 and poly.max() <= 64
            assert cov[0].sum() == cov[-1].sum() == cov[:, 0].sum() == cov[:, -1].sum() == 0
        for a, b in itertools.combinations(covs, 2):
            pa, pb = np.argwhere(a > 0), np.argwhere(b > 0)
            gap = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min()
            assert gap >= 2.0                                           # covered pixels ≥ 2 px apart


def test_noisy_background_and_image_size():
    s = training_sample(0, seed=0, config=SceneConfig(noise=8.0, image_size=96))
    img = np.asarray(s.image, dtype=float)
    assert img.shape == (96, 96, 3)
    corner = img[:4, :4].reshape(-1, 3)
    assert 4 < corner.std() < 12 and np.abs(corner.mean(0) - BACKGROUND).max() < 8


@pytest.mark.parametrize("make, match", [
    (lambda: Obj(shape="hexagon", colour="red", centre=(1, 1), size=3), "shape must be one of circle"),
    (lambda: Obj(shape="circle", colour="teal", centre=(1, 1), size=3), "colour must be one of red"),
    (lambda: Obj(shape="circle", colour="red", centre=(1, 1), size=0), "size must be a positive"),
    (lambda: SceneConfig(image_size=8), "image_size must be an int ≥ 16"),
    (lambda: SceneConfig(size_range=(0.2, 0.1)), "size_range must satisfy"),
    (lambda: SceneConfig(colourless=1.5), "colourless must be a probability"),
    (lambda: training_sample(-1), "index must be an int ≥ 0"),
    (lambda: evaluation_prompts(n_two=10_000), "unseen 2-object combinations exist"),
])
def test_bad_arguments_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_split_leaves_every_colour_and_shape_in_training():
    for shape in SHAPES:
        assert len(DEFAULT_SPLIT.allowed_colours(shape)) >= 5
    for colour in COLOURS:
        assert sum((colour, s) not in DEFAULT_SPLIT.colour_shapes for s in SHAPES) == 5
