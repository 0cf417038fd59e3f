"""toy.judge: accuracy on rendered ground truth (clean and degraded), components, scoring rules, bad input."""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageFilter

from toy import judge
from toy.judge import Detection, connected_components, detect, score
from toy.scenes import BACKGROUND, Mention, Obj, Prompt, Scene, SceneConfig, coverage, random_scene, render_array

N_SCENES = 334          # three objects each: ≥ 1000 objects per condition


def _blur(sigma):
    return lambda img, rng: np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)))


def _noise(sigma):
    return lambda img, rng: np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _shift(amount):
    return lambda img, rng: np.clip(img + rng.uniform(-amount, amount, 3), 0, 255).astype(np.uint8)


def _combo(img, rng):
    return _noise(8)(_shift(12)(_blur(1.0)(img, rng), rng), rng)


CONDITIONS = {
    "clean": (SceneConfig(), None),
    "blur 1.2": (SceneConfig(), _blur(1.2)),
    "noise 12": (SceneConfig(), _noise(12)),
    "colour shift 20": (SceneConfig(), _shift(20)),
    "rotated ≤30° small to large": (SceneConfig(max_rotation=30, size_range=(0.08, 0.17)), None),
    "noisy background + blur+shift+noise": (SceneConfig(noise=6), _combo),
}


def _accuracy(config, degrade, *, seed):
    """Share of ground-truth objects found with the right shape and colour, each matched to the nearest detection
    centre (within its half-extent, one detection per object); the number of images with a wrong count; the 99th
    percentile of the matched centres' error in pixels."""
    rng = np.random.default_rng(seed)
    right = total = wrong_count = 0
    errors = []
    for _ in range(N_SCENES):
        scene = random_scene(rng, config=config, count=3)
        img = render_array(scene)
        img = degrade(img, rng) if degrade else img
        dets = detect(img)
        wrong_count += len(dets) != len(scene.objects)
        free = list(dets)
        for obj in scene.objects:
            total += 1
            near = min(free, key=lambda d: math.dist(d.centre, obj.centre), default=None)
            if near is None or math.dist(near.centre, obj.centre) > obj.size:
                continue
            free.remove(near)
            right += near.shape == obj.shape and near.colour == obj.colour
            cov = coverage(obj, image_size=config.image_size)              # the true area centroid
            ys, xs = np.mgrid[0:config.image_size, 0:config.image_size] + 0.5
            errors.append(math.dist(near.centre, ((cov * xs).sum() / cov.sum(), (cov * ys).sum() / cov.sum())))
    return right / total, total, wrong_count, float(np.percentile(errors, 99))


@pytest.mark.heavy
@pytest.mark.parametrize("name", list(CONDITIONS))
def test_judge_reads_rendered_scenes(name):
    config, degrade = CONDITIONS[name]
    acc, total, wrong_count, centre_p99 = _accuracy(config, degrade, seed=11)
    print(f"{name}: {acc:.4f} of {total} objects, {wrong_count} images with a wrong count, "
          f"99th percentile centre error {centre_p99:.2f} px")
    assert total >= 1000
    assert acc >= 0.99
    assert wrong_count <= 0.01 * N_SCENES
    assert centre_p99 < 1.0


def test_detection_geometry():
    obj = Obj(shape="square", colour="yellow", centre=(20.25, 41.5), size=8.0)
    scene = Scene(objects=(obj, Obj(shape="circle", colour="white", centre=(45.0, 18.0), size=9.0)))
    dets = detect(Image.fromarray(render_array(scene)))
    assert [(d.shape, d.colour) for d in dets] == [("circle", "white"), ("square", "yellow")]   # largest first
    circle, square = dets
    assert math.dist(square.centre, obj.centre) < 0.1 and math.dist(circle.centre, (45, 18)) < 0.1
    assert square.area == pytest.approx(12.8 ** 2, abs=8) and circle.area == pytest.approx(math.pi * 81, rel=0.05)
    # Half-side 0.8 × 8 = 6.4: columns 13.85..26.65 and rows 35.1..47.9; a pixel counts when ≥ half covered.
    assert square.bbox == (14, 35, 26, 47)


def test_background_and_specks():
    assert detect(np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)) == []
    img = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    img[30:33, 30:33] = (225, 30, 30)                       # 9 px < the 12 px minimum
    assert detect(img) == []
    img[10:20, 10:20] = (0, 200, 60)
    grey = np.full((64, 64, 3), (200, 200, 120), dtype=np.uint8)          # no palette colour: not an object
    assert [d.colour for d in detect(img)] == ["green"]
    assert detect(grey, background=BACKGROUND) == []


def test_given_background_matches_estimated():
    scene = random_scene(np.random.default_rng(4), count=3)
    img = render_array(scene)
    assert detect(img) == detect(img, background=BACKGROUND)


def _bfs_components(labels):
    h, w = labels.shape
    seen = np.full((h, w), -1)
    n = 0
    for i in range(h):
        for j in range(w):
            if labels[i, j] < 0 or seen[i, j] >= 0:
                continue
            queue = deque([(i, j)])
            seen[i, j] = n
            while queue:
                y, x = queue.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < h and 0 <= u < w and seen[v, u] < 0 and labels[v, u] == labels[y, x]:
                            seen[v, u] = n
                            queue.append((v, u))
            n += 1
    return seen


def test_connected_components_match_a_breadth_first_search():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(-1, 3, size=(23, 31))
        ours, ref = connected_components(labels), _bfs_components(labels)
        assert ((ours < 0) == (ref < 0)).all()
        pairs = {(a, b) for a, b in zip(ours[ref >= 0], ref[ref >= 0])}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})   # a bijection


def _det(shape, colour, area=100, x=10.0):
    return Detection(shape=shape, colour=colour, centre=(x, 10.0), area=area, bbox=(0, 0, 1, 1))


PROMPT = Prompt(mentions=(Mention("circle", "red"), Mention("square", "blue")),
                caption="a red circle and a blue square")


def test_score_correct_missing_swapped_extra():
    ok = score([_det("square", "blue"), _det("circle", "red")], PROMPT)
    assert ok.correct and ok.present == (True, True) and ok.bound == (True, True) and ok.extra == ()
    missing = score([_det("circle", "red")], PROMPT)
    assert missing.present == (True, False) and missing.bound == (True, False) and not missing.correct
    swapped = score([_det("circle", "blue"), _det("square", "red")], PROMPT)
    assert swapped.all_present and swapped.bound == (False, False) and not swapped.correct
    extra = score([_det("circle", "red"), _det("square", "blue"), _det("star", "red", area=30)], PROMPT)
    assert extra.all_present and extra.all_bound and [d.shape for d in extra.extra] == ["star"]
    assert not extra.correct


def test_score_same_shape_twice_prefers_the_right_colour_and_counts_the_other_as_extra():
    dets = [_det("circle", "green", area=300), _det("circle", "red", area=50, x=40.0), _det("square", "blue")]
    s = score(dets, PROMPT)
    assert s.matched[0].colour == "red" and s.all_bound
    assert [d.colour for d in s.extra] == ["green"] and not s.correct
    wrong_only = score([_det("circle", "green", area=30), _det("circle", "white", area=300)], PROMPT.mentions[:1])
    assert wrong_only.matched[0].colour == "white"          # no right colour: the largest
    assert not wrong_only.bound[0]


def test_score_colourless_mention_needs_only_the_shape():
    prompt = (Mention("square", "blue"), Mention("circle", None))
    assert score([_det("square", "blue"), _det("circle", "purple")], prompt).correct
    assert not score([_det("square", "red"), _det("circle", "purple")], prompt).correct


def test_score_end_to_end_on_renders():
    def scene(*objs):
        return render_array(Scene(objects=tuple(Obj(shape=s, colour=c, centre=p, size=9.0) for s, c, p in objs)))
    right = scene(("circle", "red", (18, 20)), ("square", "blue", (44, 42)))
    swapped = scene(("circle", "blue", (18, 20)), ("square", "red", (44, 42)))
    extra = scene(("circle", "red", (18, 20)), ("square", "blue", (44, 42)), ("heart", "red", (46, 14)))
    assert score(detect(right), PROMPT).correct
    s = score(detect(swapped), PROMPT)
    assert s.all_present and s.bound == (False, False)
    s = score(detect(extra), PROMPT)
    assert s.all_bound and [(d.shape, d.colour) for d in s.extra] == [("heart", "red")]
    assert score(detect(right), (Mention("circle", "red"),)).extra[0].shape == "square"


def test_score_refuses_ambiguous_or_empty_prompts():
    with pytest.raises(ValueError, match=r"each shape at most once, got \['circle', 'circle'\]"):
        score([], (Mention("circle", "red"), Mention("circle", "blue")))
    with pytest.raises(ValueError, match="at least one object"):
        score([], ())


@pytest.mark.parametrize("image, kwargs, match", [
    (Image.new("RGBA", (64, 64)), {}, "mode 'RGB', got mode 'RGBA'"),
    (Image.new("L", (64, 64)), {}, "mode 'RGB', got mode 'L'"),
    (Image.new("RGB", (63, 64)), {}, "must be 64×64 pixels, got 63×64"),
    (Image.new("RGB", (64, 64)), {"image_size": 128}, "must be 128×128 pixels, got 64×64"),
    (np.zeros((64, 64, 3), np.float32), {}, "dtype uint8, got float32"),
    (np.zeros((64, 64), np.uint8), {}, r"shape \(64, 64, 3\), got \(64, 64\)"),
    (np.zeros((64, 64, 4), np.uint8), {}, r"shape \(64, 64, 3\), got \(64, 64, 4\)"),
    ([[0]], {}, "PIL.Image.Image .* or a uint8 numpy array .*got list"),
    (np.zeros((64, 64, 3), np.uint8), {"background": (0, 0)}, r"background must be three RGB values"),
])
def test_bad_images_are_refused(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect(image, **kwargs)


def test_other_image_sizes():
    config = SceneConfig(image_size=128)
    rng = np.random.default_rng(2)
    for _ in range(20):
        scene = random_scene(rng, config=config, count=3)
        dets = detect(render_array(scene), image_size=128)
        assert sorted((d.shape, d.colour) for d in dets) == sorted((o.shape, o.colour) for o in scene.objects)


def test_prototypes_cover_every_shape():
    feats, idx, scale = judge._prototypes()
    assert set(idx.tolist()) == set(range(6)) and feats.shape[0] == idx.shape[0] and (scale > 0).all()


def test_edge_strips_are_not_objects_but_an_object_over_the_border_is():
    """A decoder can leave a thin coloured strip along the image border: not an object. An object drawn partly
    over the border (a generated image may have one) is still seen."""
    img = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    img[0:2, 10:50] = (0, 200, 60)                                  # a 2-px green strip along the top edge
    img[20:60, 63] = (30, 70, 240)                                  # a 1-px blue strip along the right edge
    assert detect(img) == []
    scene = Scene(objects=(Obj(shape="circle", colour="red", centre=(3.0, 32.0), size=9.0),))
    dets = detect(render_array(scene))
    assert [(d.shape, d.colour) for d in dets] == [("circle", "red")] or [d.colour for d in dets] == ["red"]


def test_the_background_is_read_inside_the_border_band():
    """The border band is ignored: a generated image's dark frame does not shift the background estimate."""
    from toy.judge import estimate_background

    img = np.full((128, 128, 3), (70, 66, 62), dtype=np.uint8)
    img[:3] = img[-3:] = img[:, :3] = img[:, -3:] = (20, 90, 40)   # a frame of another colour
    assert estimate_background(img).tolist() == [70.0, 66.0, 62.0]
