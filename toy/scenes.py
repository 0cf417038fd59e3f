"""Procedural scenes of coloured shapes, their captions, and the train / held-out split.

World
    * Shapes: ``SHAPES`` = circle, square, triangle, star, cross, heart (upright by default; an optional rotation).
    * Colours: ``PALETTE`` — seven saturated RGB values chosen far apart, each far from the dark-grey
      ``BACKGROUND`` (64, 64, 64) along its own direction (the judge unmixes a pixel as ``bg + α (colour − bg)``;
      the closest pair of directions, yellow/orange, is ~25° apart; every colour is ≥ 150 from the background).
    * A scene holds 1–3 objects with distinct shapes; each object has a colour, a centre (x, y in pixels, origin at
      the top-left corner), a size (half-extent in pixels: the unit shape spans about [-1, 1]) and a rotation. Objects
      never overlap: their bounding circles keep ``gap`` pixels apart and ``margin`` pixels from the border.
    * Rendering: each shape's coverage is the share of a pixel's ``SUPERSAMPLE``² (4 × 4) sub-pixel samples inside its
      polygon (anti-aliasing without bias; the judge reads the soft edge for a sub-pixel outline, and the model
      sees smooth edges), then composited over a plain background, optionally with Gaussian noise on the
      background. Default 64×64 px (a VAE with a downsampling of 8 gives an 8×8 latent); the size is a parameter.
      Default object sizes: half-extent 0.11–0.16 of the side (7–10 px at 64 px); no size words in captions.

Captions
    A mention of an object is one of: ``"a red circle"`` (adjective), ``"a circle that is red"`` (relative clause) or
    ``"a circle"`` (colourless: the caption says nothing about the colour; the judge must not require one). The
    mentions (in random order — mention order says nothing about position) fill a template of ``TEMPLATES``:

    * 1 object: ``"{0}"``
    * 2 objects: ``"{0} and {1}"``, ``"{0} next to {1}"``
    * 3 objects: ``"{0}, {1} and {2}"``, ``"{0} next to {1} and {2}"``, ``"{0} and {1} next to {2}"``

    Every word is a single token of the CLIP vocabulary (``word</w>``); the longest caption is 18 tokens, far below
    75. ``parse_caption`` reads a caption back into its mentions by grammar, independently of the templates.

Split (``DEFAULT_SPLIT``, fixed, documented in ``Split``)
    Held out of training: 7 colour–shape pairs (one per colour) and 3 shape pairs (one per shape). A training scene
    contains none of them; every evaluation prompt contains at least one (so no evaluation prompt's combination was
    ever shown). Each colour and shape still appears in training with other partners.

Determinism
    ``training_sample(index, seed=s)`` depends only on (s, index) (a generator seeded by ``[s, index]``), so a data
    loader may draw samples in any order or in parallel. ``evaluation_prompts`` depends only on its arguments.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (0, 200, 60),
    "blue": (30, 70, 240),
    "yellow": (250, 230, 30),
    "purple": (150, 40, 210),
    "orange": (255, 128, 0),
    "white": (245, 245, 245),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (64, 64, 64)
DEFAULT_IMAGE_SIZE = 64
SUPERSAMPLE = 4
MAX_OBJECTS = 3

TEMPLATES: dict[int, tuple[str, ...]] = {
    1: ("{0}",),
    2: ("{0} and {1}", "{0} next to {1}"),
    3: ("{0}, {1} and {2}", "{0} next to {1} and {2}", "{0} and {1} next to {2}"),
}
MENTION_FORMS: tuple[str, ...] = ("adjective", "relative", "colourless")


# ----------------------------------------------------------------------------------------------------- geometry
def _star(points: int, inner: float) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart(n: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2                      # centre of the bounding box
    return pts / np.abs(pts).max()                             # spans [-1, 1] on its wider axis


def _circle(n: int = 128) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


# Unit outlines, y pointing up, about the origin: [N, 2] vertices of a simple polygon.
UNIT_SHAPES: dict[str, np.ndarray] = {
    "circle": _circle(),
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": _star(3, 0.5)[::2] * 1.1,                     # equilateral, point up, centroid at 0
    "star": _star(5, 0.45),
    "cross": np.array([[0.3, 0.3], [0.3, 0.9], [-0.3, 0.9], [-0.3, 0.3], [-0.9, 0.3], [-0.9, -0.3], [-0.3, -0.3],
                       [-0.3, -0.9], [0.3, -0.9], [0.3, -0.3], [0.9, -0.3], [0.9, 0.3]]),
    "heart": _heart(),
}
BOUND_RADIUS: dict[str, float] = {s: float(np.linalg.norm(p, axis=1).max()) for s, p in UNIT_SHAPES.items()}


@dataclass(frozen=True)
class Obj:
    """One object: ``shape`` in SHAPES, ``colour`` in COLOURS, ``centre`` (x, y) in pixels from the top-left,
    ``size`` the half-extent in pixels, ``rotation`` in degrees (counter-clockwise)."""

    shape: str
    colour: str
    centre: tuple[float, float]
    size: float
    rotation: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, COLOURS)
        if not (isinstance(self.size, (int, float)) and self.size > 0):
            raise ValueError(f"size must be a positive number of pixels, got {self.size!r}")

    @property
    def bound_radius(self) -> float:
        """Radius in pixels of a circle about ``centre`` that contains the shape at any rotation."""
        return self.size * BOUND_RADIUS[self.shape]

    def polygon(self, *, scale: float = 1.0) -> list[tuple[float, float]]:
        """Vertices in image coordinates (x right, y down), multiplied by ``scale`` (for supersampling)."""
        th = math.radians(self.rotation)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pts = UNIT_SHAPES[self.shape] @ rot.T * self.size
        xy = np.stack([self.centre[0] + pts[:, 0], self.centre[1] - pts[:, 1]], axis=1) * scale
        return [(float(x), float(y)) for x, y in xy]


@dataclass(frozen=True)
class Scene:
    """Objects on a background: ``image_size`` is the side in pixels (images are square), ``noise`` the standard
    deviation (0–255 units) of Gaussian noise on the background, drawn from ``noise_seed``."""

    objects: tuple[Obj, ...]
    image_size: int = DEFAULT_IMAGE_SIZE
    background: tuple[int, int, int] = BACKGROUND
    noise: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class Mention:
    """How a caption names one object: its shape, and its colour or ``None`` where the caption gives none."""

    shape: str
    colour: str | None = None

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        if self.colour is not None:
            _check_choice("colour", self.colour, COLOURS)


@dataclass(frozen=True)
class Prompt:
    """A caption and the structured spec it states: the mentions in caption order. ``kind`` says why an evaluation
    prompt is unseen ("colour-shape", "shape-pair" or both joined by "+"), "train" for a training caption."""

    mentions: tuple[Mention, ...]
    caption: str
    kind: str = "train"


@dataclass(frozen=True)
class Sample:
    """A training pair: ``image`` (PIL RGB, image_size²), its ``caption`` and the ground truth behind both."""

    image: Image.Image
    caption: str
    scene: Scene
    prompt: Prompt


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# -------------------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class Split:
    """Combinations held out of training.

    ``colour_shapes``: (colour, shape) pairs no training object has. ``shape_pairs``: unordered pairs of shapes
    that never share a training scene. The default holds out one pair per colour (7, each shape once, circle
    twice) and three shape pairs that use each shape once."""

    colour_shapes: frozenset[tuple[str, str]] = frozenset({
        ("red", "square"), ("green", "circle"), ("blue", "triangle"), ("yellow", "star"),
        ("purple", "cross"), ("orange", "heart"), ("white", "circle")})
    shape_pairs: frozenset[frozenset[str]] = frozenset({
        frozenset({"circle", "star"}), frozenset({"square", "heart"}), frozenset({"triangle", "cross"})})
    object_pairs: frozenset[frozenset[tuple[str, str]]] = frozenset()

    def __post_init__(self) -> None:
        for colour, shape in self.colour_shapes:
            _check_choice("held-out colour", colour, COLOURS)
            _check_choice("held-out shape", shape, SHAPES)
        for pair in self.shape_pairs:
            if len(pair) != 2:
                raise ValueError(f"a held-out shape pair must name two different shapes, got {sorted(pair)}")
            for shape in pair:
                _check_choice("held-out pair shape", shape, SHAPES)
        for pair in self.object_pairs:
            if len(pair) != 2 or len({shape for _c, shape in pair}) != 2:
                raise ValueError(f"a held-out object pair must name two (colour, shape) objects of different shapes, "
                                 f"got {sorted(pair)}")
            for colour, shape in pair:
                _check_choice("held-out object colour", colour, COLOURS)
                _check_choice("held-out object shape", shape, SHAPES)

    def unseen_reasons(self, mentions: Sequence[Mention]) -> list[str]:
        """Which held-out kinds the combination contains: "colour-shape", "shape-pair" (empty: seen in training)."""
        reasons = []
        if any((m.colour, m.shape) in self.colour_shapes for m in mentions):
            reasons.append("colour-shape")
        if any(frozenset({a.shape, b.shape}) in self.shape_pairs for a, b in itertools.combinations(mentions, 2)):
            reasons.append("shape-pair")
        if any(frozenset({(a.colour, a.shape), (b.colour, b.shape)}) in self.object_pairs
               for a, b in itertools.combinations(mentions, 2)):
            reasons.append("object-pair")
        return reasons

    def allowed_colours(self, shape: str) -> list[str]:
        """Colours a training object of ``shape`` may have."""
        return [c for c in COLOURS if (c, shape) not in self.colour_shapes]


DEFAULT_SPLIT = Split()


def held_out_object_pairs(*, fraction: float, seed: int = 0) -> frozenset[frozenset[tuple[str, str]]]:
    """A share ``fraction`` of all unordered pairs of coloured objects with different shapes (15 shape pairs × 49
    colour pairs = 735), drawn without replacement by a generator seeded by ``[seed, 24]``."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    pairs = [frozenset({(ca, sa), (cb, sb)}) for sa, sb in itertools.combinations(SHAPES, 2)
             for ca in COLOURS for cb in COLOURS]
    rng = np.random.default_rng([seed, 24])
    return frozenset(pairs[i] for i in rng.choice(len(pairs), size=round(fraction * len(pairs)), replace=False))


#: The toy model v2's split, which mirrors where SD fails: every colour–shape pair is drawn in training (alone and
#: with other objects), and a quarter of the pairs of coloured objects (184 of 735) never share a training scene.
#: Evaluation prompts combine objects that each were drawn in training, in combinations that never were.
SPLIT_V2 = Split(colour_shapes=frozenset(), shape_pairs=frozenset(), object_pairs=held_out_object_pairs(fraction=0.25))


# ----------------------------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def mention_text(mention: Mention, *, form: str) -> str:
    """The phrase for one mention, with its article: "a red circle", "a circle that is red" or "a circle"."""
    _check_choice("form", form, MENTION_FORMS)
    if mention.colour is None or form == "colourless":
        return f"{_article(mention.shape)} {mention.shape}"
    if form == "adjective":
        return f"{_article(mention.colour)} {mention.colour} {mention.shape}"
    return f"{_article(mention.shape)} {mention.shape} that is {mention.colour}"


def caption_for(mentions: Sequence[Mention], *, template: int, forms: Sequence[str]) -> str:
    """Fill ``TEMPLATES[len(mentions)][template]`` with the mentions in order, each in its form."""
    n = len(mentions)
    if n not in TEMPLATES:
        raise ValueError(f"mentions must number 1 to {MAX_OBJECTS}, got {n}")
    if not 0 <= template < len(TEMPLATES[n]):
        raise ValueError(f"template must be 0..{len(TEMPLATES[n]) - 1} for {n} mentions, got {template}")
    if len(forms) != n:
        raise ValueError(f"forms must give one form per mention ({n}), got {len(forms)}")
    return TEMPLATES[n][template].format(*(mention_text(m, form=f) for m, f in zip(mentions, forms)))


_ALT = lambda words: "|".join(words)  # noqa: E731
_MENTION_RE = re.compile(
    rf"^(?:an? (?P<c1>{_ALT(COLOURS)}) (?P<s1>{_ALT(SHAPES)})"
    rf"|an? (?P<s2>{_ALT(SHAPES)}) that is (?P<c2>{_ALT(COLOURS)})"
    rf"|an? (?P<s3>{_ALT(SHAPES)}))$")
_SEPARATORS = re.compile(r", | and | next to ")


def parse_caption(caption: str) -> tuple[Mention, ...]:
    """The mentions a caption states, in order (grammar: mentions joined by ", ", " and " or " next to ").
    Raises ValueError naming the caption and the part that is not a mention."""
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    mentions = []
    for part in _SEPARATORS.split(caption):
        m = _MENTION_RE.match(part)
        if m is None:
            raise ValueError(f"caption {caption!r}: {part!r} is not a mention such as 'a red circle', "
                             f"'a circle that is red' or 'a circle'")
        shape = m["s1"] or m["s2"] or m["s3"]
        mentions.append(Mention(shape=shape, colour=m["c1"] or m["c2"]))
    return tuple(mentions)


# ---------------------------------------------------------------------------------------------------- rendering
def coverage(obj: Obj, *, image_size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel the object covers, float32 ``[image_size, image_size]`` in [0, 1]: the share of the
    pixel's ``supersample``² sub-pixel centres that lie inside the polygon (even–odd crossing test, unbiased:
    pixel (i, j) spans [j, j + 1) × [i, i + 1))."""
    poly = np.asarray(obj.polygon())                                               # [N, 2] (x, y)
    out = np.zeros((image_size, image_size), dtype=np.float32)
    x0, y0 = (max(int(math.floor(v)), 0) for v in poly.min(0))
    x1, y1 = (min(int(math.ceil(v)), image_size) for v in poly.max(0))
    if x1 <= x0 or y1 <= y0:
        return out
    sub = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + sub).ravel()                                # [W * s]
    ys = (np.arange(y0, y1)[:, None] + sub).ravel()                                # [H * s]
    px, py = poly[:, 0], poly[:, 1]
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    inside = np.zeros((ys.size, xs.size), dtype=bool)
    for ax, ay, bx, by in zip(px, py, qx, qy):
        if ay == by:
            continue
        rows = (ys >= min(ay, by)) & (ys < max(ay, by))                           # edge spans this scanline
        if not rows.any():
            continue
        xcross = ax + (ys[rows] - ay) * (bx - ax) / (by - ay)                       # [rows]
        inside[rows] ^= xs[None, :] < xcross[:, None]
    cells = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    out[y0:y1, x0:x1] = cells
    return out


def render_array(scene: Scene) -> np.ndarray:
    """The scene as uint8 ``[image_size, image_size, 3]`` (RGB)."""
    n = scene.image_size
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = np.asarray(scene.background, dtype=np.float32)
    if scene.noise > 0:
        img += np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, size=img.shape).astype(np.float32)
    for obj in scene.objects:
        a = coverage(obj, image_size=n)[..., None]
        img = img * (1 - a) + np.asarray(PALETTE[obj.colour], dtype=np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(scene: Scene) -> Image.Image:
    """The scene as a PIL RGB image (``image_size`` × ``image_size``)."""
    return Image.fromarray(render_array(scene), mode="RGB")


# ----------------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are fractions of the image side (half-extent of the unit shape); ``gap`` and
    ``margin`` are in pixels at 64 px and scale with the image; ``object_weights`` weigh 1, 2, 3 objects;
    ``colourless`` is the chance that a mention omits its colour; ``max_rotation`` in degrees (0: upright);
    ``noise`` the background noise's standard deviation (0–255)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    size_range: tuple[float, float] = (0.11, 0.16)
    gap: float = 3.0
    margin: float = 1.0
    object_weights: tuple[float, float, float] = (0.2, 0.4, 0.4)
    colourless: float = 0.1
    max_rotation: float = 0.0
    noise: float = 0.0
    split: Split = field(default_factory=Split)

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and self.image_size >= 16):
            raise ValueError(f"image_size must be an int ≥ 16 pixels, got {self.image_size!r}")
        lo, hi = self.size_range
        if not 0 < lo <= hi <= 0.25:
            raise ValueError(f"size_range must satisfy 0 < low ≤ high ≤ 0.25 (fractions of the side), "
                             f"got {self.size_range}")
        if len(self.object_weights) != MAX_OBJECTS or min(self.object_weights) < 0 or sum(self.object_weights) <= 0:
            raise ValueError(f"object_weights must be {MAX_OBJECTS} non-negative weights with a positive sum, "
                             f"got {self.object_weights}")
        if not 0 <= self.colourless <= 1:
            raise ValueError(f"colourless must be a probability in [0, 1], got {self.colourless}")
        if self.noise < 0 or self.gap < 0 or self.margin < 0 or self.max_rotation < 0:
            raise ValueError(f"noise, gap, margin and max_rotation must be ≥ 0, got noise={self.noise}, "
                             f"gap={self.gap}, margin={self.margin}, max_rotation={self.max_rotation}")


#: the scenes toy model v1 was trained on (``toy.train``)
SCENES_V1 = SceneConfig(image_size=128)
#: toy model v2's scenes (``toy.train_v2``): objects a little larger, more one-object scenes, the v2 split
SCENES_V2 = SceneConfig(image_size=128, size_range=(0.14, 0.20), object_weights=(0.4, 0.35, 0.25), split=SPLIT_V2)
#: each toy model's world by name: its scenes, and through them the split its evaluation holds out
WORLDS = {"v1": SCENES_V1, "v2": SCENES_V2}


def place_objects(rng: np.random.Generator, shapes: Sequence[str], colours: Sequence[str], *,
                  config: SceneConfig, tries: int = 200) -> tuple[Obj, ...]:
    """Objects with the given shapes and colours at random sizes, rotations and non-overlapping places (bounding
    circles ``gap`` apart, ``margin`` from the border), by rejection sampling. Raises RuntimeError if no placement
    is found in ``tries`` attempts (does not happen with the default sizes)."""
    n, scale = config.image_size, config.image_size / DEFAULT_IMAGE_SIZE
    gap, margin = config.gap * scale, config.margin * scale
    for _ in range(tries):
        objs: list[Obj] = []
        for shape, colour in zip(shapes, colours):
            size = float(rng.uniform(*config.size_range)) * n
            rot = float(rng.uniform(-config.max_rotation, config.max_rotation)) if config.max_rotation else 0.0
            r = size * BOUND_RADIUS[shape]
            for _ in range(50):
                c = (float(rng.uniform(r + margin, n - r - margin)), float(rng.uniform(r + margin, n - r - margin)))
                if all(math.dist(c, o.centre) >= r + o.bound_radius + gap for o in objs):
                    objs.append(Obj(shape=shape, colour=colour, centre=c, size=size, rotation=rot))
                    break
            else:
                break
        if len(objs) == len(shapes):
            return tuple(objs)
    raise RuntimeError(f"could not place {list(shapes)} in {n}px after {tries} tries; lower size_range")


def _training_combination(rng: np.random.Generator, config: SceneConfig) -> tuple[list[str], list[str]]:
    weights = np.asarray(config.object_weights, dtype=float)
    count = int(rng.choice(np.arange(1, MAX_OBJECTS + 1), p=weights / weights.sum()))
    split = config.split
    while True:
        while True:
            shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
            if not any(frozenset(p) in split.shape_pairs for p in itertools.combinations(shapes, 2)):
                break
        colours = [str(rng.choice(split.allowed_colours(s))) for s in shapes]
        if not split.object_pairs or not any(
                frozenset(p) in split.object_pairs for p in itertools.combinations(zip(colours, shapes), 2)):
            return shapes, colours


def _random_caption(rng: np.random.Generator, mentions: Sequence[Mention], *, colourless: float) -> str:
    forms = [("colourless" if rng.random() < colourless else str(rng.choice(["adjective", "relative"])))
             for _ in mentions]
    return caption_for(mentions, template=int(rng.integers(len(TEMPLATES[len(mentions)]))), forms=forms)


def training_sample(index: int, *, seed: int = 0, config: SceneConfig | None = None) -> Sample:
    """Training sample number ``index`` of the stream ``seed``: a scene of allowed combinations, its render and a
    caption (mentions in random order, random forms and template). Depends only on (seed, index, config)."""
    if not (isinstance(index, int) and index >= 0):
        raise ValueError(f"index must be an int ≥ 0, got {index!r}")
    config = config or SceneConfig()
    rng = np.random.default_rng([seed, index])
    shapes, colours = _training_combination(rng, config)
    objects = place_objects(rng, shapes, colours, config=config)
    scene = Scene(objects=objects, image_size=config.image_size, noise=config.noise,
                  noise_seed=int(rng.integers(2 ** 31)))
    order = rng.permutation(len(objects))
    mentions = tuple(Mention(shape=objects[i].shape, colour=objects[i].colour) for i in order)
    caption = _random_caption(rng, mentions, colourless=config.colourless)
    prompt = Prompt(mentions=parse_caption(caption), caption=caption)
    return Sample(image=render(scene), caption=caption, scene=scene, prompt=prompt)


def training_samples(*, seed: int = 0, count: int | None = None, start: int = 0,
                     config: SceneConfig | None = None) -> Iterator[Sample]:
    """``training_sample(start), training_sample(start + 1), …`` — ``count`` of them, or endless if None."""
    indices = itertools.count(start) if count is None else range(start, start + count)
    for i in indices:
        yield training_sample(i, seed=seed, config=config)


def _unseen_combinations(count: int, split: Split) -> dict[str, list[tuple[Mention, ...]]]:
    """All combinations of ``count`` coloured objects with distinct shapes (shapes in SHAPES order) that contain a
    held-out element, grouped by their reasons joined with "+"."""
    groups: dict[str, list[tuple[Mention, ...]]] = {}
    for shapes in itertools.combinations(SHAPES, count):
        for colours in itertools.product(COLOURS, repeat=count):
            combo = tuple(Mention(shape=s, colour=c) for s, c in zip(shapes, colours))
            reasons = split.unseen_reasons(combo)
            if reasons:
                groups.setdefault("+".join(reasons), []).append(combo)
    return groups


def evaluation_prompts(*, n_two: int = 100, n_three: int = 50, seed: int = 0,
                       split: Split | None = None, exclude: Sequence[Prompt] = ()) -> list[Prompt]:
    """Held-out prompts: ``n_two`` two-object and ``n_three`` three-object prompts, every mention coloured, each a
    distinct combination containing at least one held-out element of ``split`` (so none was seen in training).
    Under a split of colour–shape pairs and shape pairs (the default), about half of each count probes held-out
    colour–shape pairs (with seen shape pairs) and half held-out shape pairs (any colours); under a split of object
    pairs only (:data:`SPLIT_V2`) the combinations are drawn from all that hold a held-out pair. Combinations of
    ``exclude`` are never drawn (a tuning set apart from an evaluation set: :func:`tuning_prompts`). Mentions in
    random order, random adjective/relative forms and template. Deterministic in its arguments."""
    split = split or DEFAULT_SPLIT
    rng = np.random.default_rng([seed, 10])
    taken = {frozenset((m.colour, m.shape) for m in p.mentions) for p in exclude}
    prompts: list[Prompt] = []
    for count, wanted in ((2, n_two), (3, n_three)):
        if not (isinstance(wanted, int) and wanted >= 0):
            raise ValueError(f"n_two and n_three must be ints ≥ 0, got {wanted!r} for {count} objects")
        groups = {k: [c for c in g if frozenset((m.colour, m.shape) for m in c) not in taken]
                  for k, g in _unseen_combinations(count, split).items()}
        if split.colour_shapes or split.shape_pairs:
            binding = groups.get("colour-shape", [])
            pairs = [c for k, g in groups.items() if "shape-pair" in k for c in g]
        else:
            binding, pairs = [c for g in groups.values() for c in g], []
        if wanted > len(binding) + len(pairs):
            raise ValueError(f"only {len(binding) + len(pairs)} unseen {count}-object combinations exist; "
                             f"asked for {wanted}")
        n_pairs = min(len(pairs), wanted // 2)
        n_binding = min(len(binding), wanted - n_pairs)
        n_pairs = wanted - n_binding
        chosen = ([binding[i] for i in rng.choice(len(binding), size=n_binding, replace=False)]
                  + [pairs[i] for i in rng.choice(len(pairs), size=n_pairs, replace=False)])
        for combo in chosen:
            mentions = tuple(combo[i] for i in rng.permutation(count))
            caption = _random_caption(rng, mentions, colourless=0.0)
            prompts.append(Prompt(mentions=mentions, caption=caption, kind="+".join(split.unseen_reasons(mentions))))
    return prompts


def tuning_prompts(*, n_two: int, n_three: int, seed: int = 0, split: Split | None = None) -> list[Prompt]:
    """Held-out prompts kept apart from the evaluation set: combinations that :func:`evaluation_prompts` at its
    default counts and seed 0 never draws, for choosing settings without touching what is reported."""
    return evaluation_prompts(n_two=n_two, n_three=n_three, seed=seed + 1000, split=split,
                              exclude=evaluation_prompts(split=split))


def typed_words(prompt: Prompt) -> dict[str, str]:
    """The words a user would type into the methods' word inputs for ``prompt``: ``subjects``/``targets`` = its
    shapes, ``groups``/``entities`` = colour + shape per mention (a colour's second occurrence as ``red#2``, counted
    in caption order; a colourless mention is its shape alone)."""
    seen: dict[str, int] = {}
    groups = []
    for m in prompt.mentions:
        if m.colour is None:
            groups.append(m.shape)
            continue
        seen[m.colour] = seen.get(m.colour, 0) + 1
        colour = m.colour if seen[m.colour] == 1 else f"{m.colour}#{seen[m.colour]}"
        groups.append(f"{colour} {m.shape}")
    shapes = ", ".join(m.shape for m in prompt.mentions)
    return {"subjects": shapes, "targets": shapes, "groups": "; ".join(groups), "entities": "; ".join(groups)}


def random_scene(rng: np.random.Generator, *, config: SceneConfig | None = None,
                 count: int | None = None) -> Scene:
    """A scene of any combination (held-out ones included) — ground truth for testing the judge. ``count``
    objects (1–3), or drawn by ``config.object_weights`` if None."""
    config = config or SceneConfig()
    if count is None:
        w = np.asarray(config.object_weights, dtype=float)
        count = int(rng.choice(np.arange(1, MAX_OBJECTS + 1), p=w / w.sum()))
    if count not in TEMPLATES:
        raise ValueError(f"count must be 1 to {MAX_OBJECTS}, got {count}")
    shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
    colours = [str(c) for c in rng.choice(COLOURS, size=count)]
    objects = place_objects(rng, shapes, colours, config=config)
    return Scene(objects=objects, image_size=config.image_size, noise=config.noise,
                 noise_seed=int(rng.integers(2 ** 31)))
