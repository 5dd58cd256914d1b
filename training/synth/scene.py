"""Drawing one image: background, clutter, placed and coloured objects, the owner map that makes the masks
exact, labels and caption (``make_sample``), and which split an image belongs to (``split_of``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.synth.config import SynthConfig
from training.synth.shapes import BUILDERS, Polygon
from training.synth.vocabulary import BACKGROUNDS, CATEGORY_KINDS, COLOURS, DISTRACTOR_KINDS, WEAPON_KINDS


@dataclass
class SynthObject:
    """One drawn object.

    Attributes:
        kind: shape name (``pistol``, ``circle``, ...).
        weapon: whether it is a weapon shape.
        colour: the colour name used in the caption.
        bbox: visible bounding box ``[x0, y0, x1, y1]`` in pixels (exclusive end), empty if fully hidden.
        visible: number of visible pixels after occlusion.
    """

    kind: str
    weapon: bool
    colour: str
    bbox: list[int]
    visible: int


@dataclass
class SynthSample:
    """One generated image with its exact masks.

    Attributes:
        image: the RGB image, ``size × size``.
        masks: ``{category: bool [H, W]}`` exact visible-pixel masks.
        labels: ``{category: 0/1}``.
        objects: the objects in drawing order.
        background: background texture name.
        caption: a one-sentence description for contrastive pre-training.
    """

    image: Image.Image
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    objects: list[SynthObject]
    background: str
    caption: str


def _jitter_colour(r: np.random.Generator, rgb: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    c = np.clip(np.asarray(rgb) + r.integers(-amount, amount + 1, 3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _background(r: np.random.Generator, size: int) -> tuple[Image.Image, str, np.ndarray]:
    """A textured background; returns the image, its texture name and its mean colour."""
    kind = BACKGROUNDS[int(r.integers(len(BACKGROUNDS)))]
    # Backgrounds use muted random colours so that object colours stay distinguishable on average.
    c1 = r.integers(40, 216, 3).astype(np.float32)
    c2 = np.clip(c1 + r.integers(-90, 91, 3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "plain":
        t = np.zeros((size, size), np.float32)
    elif kind == "gradient":
        a = r.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / math.sqrt(2) + 0.5
    elif kind == "striped":
        a, f = r.uniform(0, math.pi), r.uniform(4, 14)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * f * 2 * math.pi) > 0).astype(np.float32)
    elif kind == "checkered":
        f = r.integers(3, 10)
        t = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(np.float32)
    elif kind == "noisy":
        low = r.random((int(r.integers(4, 16)),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(low, "F").resize((size, size), Image.Resampling.BICUBIC), np.float32)
        t = t + r.normal(0, 0.15, (size, size)).astype(np.float32)
    elif kind == "dotted":
        f = r.uniform(6, 14)
        t = ((np.sin(xx * f * 2 * math.pi) * np.sin(yy * f * 2 * math.pi)) > 0.6).astype(np.float32)
    else:  # wavy
        f, g = r.uniform(3, 8), r.uniform(2, 6)
        t = 0.5 + 0.5 * np.sin((yy + 0.08 * np.sin(xx * g * 2 * math.pi)) * f * 2 * math.pi)
    t = np.clip(t, 0.0, 1.0)[..., None]
    rgb = c1 * (1 - t) + c2 * t
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return img, kind, rgb.reshape(-1, 3).mean(0)


def _clutter(r: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Thin lines and small blobs that belong to the background (never labelled, drawn under objects)."""
    for _ in range(int(r.integers(0, 7))):
        col = tuple(int(v) for v in r.integers(0, 256, 3))
        if r.random() < 0.5:
            p = r.uniform(0, size, 4)
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=col, width=int(r.integers(1, 3)))
        else:
            x, y, rad = r.uniform(0, size), r.uniform(0, size), r.uniform(1, size * 0.025)
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=col)


def _pick_colour(r: np.random.Generator, avoid: np.ndarray) -> str:
    """A colour name whose RGB is not too close to the background's mean (keeps objects visible)."""
    names = list(COLOURS)
    for _ in range(8):
        name = names[int(r.integers(len(names)))]
        if np.linalg.norm(np.asarray(COLOURS[name], np.float32) - avoid) > 80:
            return name
    return name


def _place(r: np.random.Generator, polys: list[Polygon], size: int, scale: float) -> list[list[tuple[float, float]]]:
    """Rotate, mirror, scale and translate local polygons into pixel coordinates, keeping the object in view."""
    a = r.uniform(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    mirror = -1.0 if r.random() < 0.5 else 1.0
    s = scale * size
    pts = np.concatenate([np.asarray(p, np.float64) for p in polys])
    pts_t = np.stack([pts[:, 0] * mirror * ca - pts[:, 1] * sa, pts[:, 0] * mirror * sa + pts[:, 1] * ca], 1) * s
    lo, hi = pts_t.min(0), pts_t.max(0)
    # Keep the whole object inside the image where it fits, so that labels never depend on a sliver.
    cx = r.uniform(-lo[0], size - hi[0]) if hi[0] - lo[0] < size else size / 2 - (lo[0] + hi[0]) / 2
    cy = r.uniform(-lo[1], size - hi[1]) if hi[1] - lo[1] < size else size / 2 - (lo[1] + hi[1]) / 2
    out = []
    for p in polys:
        q = np.asarray(p, np.float64)
        x = q[:, 0] * mirror * ca - q[:, 1] * sa
        y = q[:, 0] * mirror * sa + q[:, 1] * ca
        out.append([(float(u), float(v)) for u, v in zip(x * s + cx, y * s + cy, strict=True)])
    return out


_SCALE = {
    "rifle": 1.3,
    "knife": 1.1,
    "dagger": 1.1,
    "circle": 1.2,
    "box": 1.2,
    "phone": 1.3,
    "mug": 1.3,
    "star": 1.1,
    "umbrella": 1.1,
}
"""Per-shape size factors: the builders differ in extent, these bring their pixel areas into one range."""


def _owner_map(drawn: Sequence[tuple], size: int) -> np.ndarray:
    """``[size, size]`` uint8: 1 + index of the object that painted each pixel last, 0 for background."""
    owner = Image.new("L", (size, size), 0)
    odraw = ImageDraw.Draw(owner)
    for j, d in enumerate(drawn):
        for poly in d[1]:
            odraw.polygon(poly, fill=j + 1)
    return np.asarray(owner)


def _min_weapon_visibility(drawn: Sequence[tuple], own: np.ndarray, size: int) -> float:
    """Smallest visible fraction of any weapon's own area (1.0 when there is no weapon)."""
    worst = 1.0
    for j, d in enumerate(drawn):
        if d[0] not in WEAPON_KINDS:
            continue
        alone = Image.new("1", (size, size), 0)
        adraw = ImageDraw.Draw(alone)
        for poly in d[1]:
            adraw.polygon(poly, fill=1)
        full = int(np.asarray(alone).sum())
        worst = min(worst, float((own == j + 1).sum()) / max(full, 1))
    return worst


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(objects: Sequence[tuple[str, str]], background: str) -> str:
    """The caption of an image: ``a red pistol and a blue circle on a striped background``.

    Args:
        objects: ``(colour, kind)`` pairs in drawing order; an empty colour leaves the word out (the caption
            of a greyscale copy: ``a pistol and a circle on a striped background``).
        background: texture name from ``BACKGROUNDS``.
    """
    phrases = [f"{_article(c)} {c} {k}" if c else f"{_article(k)} {k}" for c, k in objects]
    if len(phrases) > 1:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    else:
        body = phrases[0] if phrases else "nothing"
    return f"{body} on {_article(background)} {background} background"


def make_sample(index: int, cfg: SynthConfig) -> SynthSample:
    """Draw image ``index`` of the set described by ``cfg`` (depends only on ``cfg.seed`` and ``index``).

    Returns:
        The sample with its exact masks (``[size, size]`` bool per category).
    """
    r = np.random.default_rng([cfg.seed, index])
    size = cfg.size
    img, bg_kind, bg_mean = _background(r, size)
    draw = ImageDraw.Draw(img)
    _clutter(r, draw, size)

    positive = r.random() < cfg.positive_fraction
    wkinds = cfg.weapon_kinds
    kinds: list[str] = []
    if positive:
        n_w = 1 + int(r.random() < 0.15)
        kinds += [wkinds[int(r.integers(len(wkinds)))] for _ in range(n_w)]
        n_d = int(r.integers(0, cfg.max_distractors + 1))
    else:
        n_d = int(r.integers(1, cfg.max_distractors + 2))
    kinds += [DISTRACTOR_KINDS[int(r.integers(len(DISTRACTOR_KINDS)))] for _ in range(n_d)]
    order = r.permutation(len(kinds))
    kinds = [kinds[i] for i in order]

    # Place every object first, then draw: the order may change so that no weapon is mostly hidden.
    drawn: list[tuple[str, list[Polygon], list[int], str, tuple[int, int, int], tuple[int, int, int]]] = []
    for kind in kinds:
        polys, parts = BUILDERS[kind](r)
        scale = r.uniform(cfg.min_scale, cfg.max_scale) * _SCALE.get(kind, 1.0)
        placed = _place(r, polys, size, scale)
        cname = _pick_colour(r, bg_mean)
        main = _jitter_colour(r, COLOURS[cname])
        second = _jitter_colour(r, COLOURS[_pick_colour(r, bg_mean)])
        drawn.append((kind, placed, parts, cname, main, second))

    own = _owner_map(drawn, size)
    if _min_weapon_visibility(drawn, own, size) < 0.6:
        drawn = [d for d in drawn if d[0] not in WEAPON_KINDS] + [d for d in drawn if d[0] in WEAPON_KINDS]
        own = _owner_map(drawn, size)
    kinds = [d[0] for d in drawn]
    colours = [d[3] for d in drawn]
    for _kind, placed, parts, _c, main, second in drawn:
        for poly, part in zip(placed, parts, strict=True):
            draw.polygon(poly, fill=main if part == 0 else second)

    objects: list[SynthObject] = []
    for j, kind in enumerate(kinds):
        m = own == j + 1
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else []
        objects.append(SynthObject(kind, kind in WEAPON_KINDS, colours[j], bbox, int(m.sum())))

    masks: dict[str, np.ndarray] = {}
    labels: dict[str, int] = {}
    for cat in cfg.categories:
        ids = [j + 1 for j, o in enumerate(objects) if o.kind in CATEGORY_KINDS[cat]]
        m = np.isin(own, ids) if ids else np.zeros((size, size), bool)
        masks[cat] = m
        labels[cat] = int(m.any())

    # Mild photometric noise on the pixels only; the masks stay the exact geometry.
    if r.random() < cfg.blur_probability:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(r.uniform(0.3, 1.0))))
    caption = caption_for([(o.colour, o.kind) for o in objects if o.visible > 0], bg_kind)
    return SynthSample(img, masks, labels, objects, bg_kind, caption)


def split_of(index: int, cfg: SynthConfig) -> str:
    """The split of image ``index``: a deterministic function of ``(seed, index)``."""
    u = np.random.default_rng([cfg.seed, index, 7]).random()
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"
