"""Synthetic weapon / distractor images with exact masks and captions (``dangerclip synth``).

Each image is a textured background with a little clutter and one to four flat-coloured objects drawn as
polygons: *weapons* (pistol, revolver, rifle, knife, dagger — each a procedural shape with randomised
proportions) and *distractors* (circle, box, phone, bottle, umbrella, mug, spoon, star). Every object gets
a random pose (rotation, mirror), scale, position and colour; weapons and distractors are drawn from the
same colour and size distributions so that neither colour nor size gives the label away.

The masks are exact: the generator keeps an owner map (which object painted each pixel, after
occlusion), and a category's mask is the set of pixels whose visible owner belongs to that category, at the
image's full resolution. Captions ("a red pistol and a blue circle on a striped background") are written
for the contrastive pre-training of the tiny demo CLIP (``training.pretrain``).

**This data makes the pipeline testable offline; it is not a claim about real images.** A model that
does well here has learnt to tell these procedural silhouettes apart, nothing more.

Everything is deterministic: image ``i`` of a dataset depends only on ``(seed, i)`` and the options, so
a dataset can be regenerated, extended, or generated in parallel with identical bytes.

Output layout (``dangerclip synth OUT``)::

    OUT/manifest.jsonl        one row per image (dangerclip.manifest format + caption/objects/background)
    OUT/images/000000.jpg     the images
    OUT/masks/000000_gun.png  one 1-bit mask per image and category (all zero for negatives)
    OUT/synth.json            the options the set was generated with
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.commandline import exits_2_on_bad_input
from training.files import write_json, write_jsonl
from training.runtime import map_in_processes

log = logging.getLogger(__name__)

Polygon = list[tuple[float, float]]
"""A polygon in an object's local frame: x along the object's long axis, roughly in [-0.5, 0.5]."""

# ----------------------------------------------------------------------------------------------------
# Vocabulary

WEAPON_KINDS: dict[str, str] = {
    "pistol": "gun",
    "revolver": "gun",
    "rifle": "gun",
    "knife": "knife",
    "dagger": "knife",
}
"""Weapon shape → its fine category. The single-prompt category ``weapon`` is any of them."""

DISTRACTOR_KINDS: tuple[str, ...] = ("circle", "box", "phone", "bottle", "umbrella", "mug", "spoon", "star")

CATEGORY_KINDS: dict[str, tuple[str, ...]] = {
    "gun": tuple(k for k, c in WEAPON_KINDS.items() if c == "gun"),
    "knife": tuple(k for k, c in WEAPON_KINDS.items() if c == "knife"),
    "weapon": tuple(WEAPON_KINDS),
}
"""Categories a synthetic set can be labelled with, and the weapon shapes each one covers."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "orange": (235, 130, 20),
    "yellow": (230, 210, 40),
    "green": (40, 160, 60),
    "cyan": (40, 190, 200),
    "blue": (40, 70, 200),
    "purple": (130, 50, 170),
    "pink": (235, 120, 180),
    "brown": (120, 75, 35),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "noisy", "dotted", "wavy")


# ----------------------------------------------------------------------------------------------------
# Shapes: each builder returns (polygons, part index per polygon); part 0 = main colour, 1 = secondary.


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 24, a0: float = 0.0, a1: float = 360.0
) -> Polygon:
    full = a1 - a0 >= 360
    # A closed ellipse must not repeat its first point; an arc keeps both end points.
    angles = np.linspace(a0, a1, n, endpoint=not full)
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in angles]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _arc_band(cx: float, cy: float, r_out: float, r_in: float, a0: float, a1: float, n: int = 10) -> Polygon:
    """A curved band (an arc with thickness) as one hole-free polygon."""
    outer = _ellipse(cx, cy, r_out, r_out, n, a0, a1)
    inner = _ellipse(cx, cy, r_in, r_in, n, a0, a1)
    return outer + inner[::-1]


def _pistol(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    barrel = r.uniform(0.75, 1.0)
    h = r.uniform(0.14, 0.2)
    grip_w = r.uniform(0.18, 0.26)
    grip_len = r.uniform(0.32, 0.45)
    slant = r.uniform(0.05, 0.16)
    x0 = -0.5
    slide = _rect(x0, -h, x0 + barrel, 0.0)
    grip = [
        (x0 + 0.02, 0.0),
        (x0 + 0.02 + grip_w, 0.0),
        (x0 + 0.02 + grip_w - slant, grip_len),
        (x0 + 0.02 - slant, grip_len),
    ]
    guard = _arc_band(x0 + grip_w + 0.1, 0.0, 0.09, 0.06, 0, 180, 8)
    return [slide, grip, guard], [0, 1, 0]


def _revolver(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    barrel = r.uniform(0.45, 0.6)
    h = r.uniform(0.08, 0.11)
    x0 = -0.5
    cyl = _rect(x0 + 0.12, -0.1, x0 + 0.36, 0.06)
    bar = _rect(x0 + 0.36, -0.1, x0 + 0.36 + barrel, -0.1 + h)
    frame = _rect(x0 + 0.02, -0.12, x0 + 0.14, 0.03)
    grip = [(x0 + 0.02, 0.03), (x0 + 0.16, 0.03), (x0 + 0.06, 0.36), (x0 - 0.1, 0.33)]
    guard = _arc_band(x0 + 0.2, 0.06, 0.07, 0.045, 0, 180, 8)
    return [cyl, bar, frame, grip, guard], [0, 0, 0, 1, 0]


def _rifle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    x0, x1 = -0.5, 0.5
    stock_len = r.uniform(0.22, 0.3)
    body_h = r.uniform(0.07, 0.1)
    stock = [(x0, -0.03), (x0 + stock_len, -0.02), (x0 + stock_len, body_h), (x0, 0.13)]
    body = _rect(x0 + stock_len, -0.04, x0 + stock_len + 0.35, body_h)
    barrel = _rect(x0 + stock_len + 0.35, -0.03, x1, 0.0)
    mag_x = x0 + stock_len + r.uniform(0.15, 0.25)
    mag = [
        (mag_x, body_h),
        (mag_x + 0.07, body_h),
        (mag_x + 0.1, body_h + 0.16),
        (mag_x + 0.03, body_h + 0.17),
    ]
    grip_x = x0 + stock_len + 0.02
    grip = [
        (grip_x, body_h),
        (grip_x + 0.06, body_h),
        (grip_x + 0.03, body_h + 0.12),
        (grip_x - 0.03, body_h + 0.11),
    ]
    return [stock, body, barrel, mag, grip], [1, 0, 0, 0, 1]


def _knife(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    handle = r.uniform(0.3, 0.4)
    w = r.uniform(0.09, 0.14)
    x0, x1 = -0.5, 0.5
    hx = x0 + handle
    # Blade: straight spine, edge curving up to the tip.
    edge = [(hx + (x1 - hx) * t, w * (1 - t**2.2)) for t in np.linspace(0, 1, 8)]
    blade = [(hx, -0.02)] + [(x1, -0.02)] + edge[::-1]
    hnd = _rect(x0, -0.02, hx, w * 0.85)
    return [blade, hnd], [0, 1]


def _dagger(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    handle = r.uniform(0.25, 0.32)
    w = r.uniform(0.06, 0.09)
    x0, x1 = -0.5, 0.5
    hx = x0 + handle
    blade = [(hx, -w), (x1 - 0.12, -w * 0.7), (x1, 0.0), (x1 - 0.12, w * 0.7), (hx, w)]
    guard = _rect(hx - 0.04, -w - 0.08, hx, w + 0.08)
    hnd = _rect(x0, -w * 0.7, hx - 0.04, w * 0.7)
    pommel = _ellipse(x0, 0.0, 0.04, 0.04, 10)
    return [blade, guard, hnd, pommel], [0, 1, 1, 1]


def _circle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    rad = r.uniform(0.2, 0.32)
    return [_ellipse(0, 0, rad, rad * r.uniform(0.8, 1.0), 28)], [0]


def _box(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.3, 0.6), r.uniform(0.2, 0.45)
    lid = _rect(-w / 2, -h / 2 - 0.05, w / 2, -h / 2)
    return [_rect(-w / 2, -h / 2, w / 2, h / 2), lid], [0, 1]


def _phone(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.2, 0.28), r.uniform(0.4, 0.55)
    body = _rect(-w / 2, -h / 2, w / 2, h / 2)
    screen = _rect(-w / 2 + 0.025, -h / 2 + 0.05, w / 2 - 0.025, h / 2 - 0.06)
    return [body, screen], [0, 1]


def _bottle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w = r.uniform(0.16, 0.24)
    body = _rect(-0.1, -w / 2, 0.5, w / 2)
    shoulder = [(-0.1, -w / 2), (-0.1, w / 2), (-0.25, 0.04), (-0.25, -0.04)]
    neck = _rect(-0.4, -0.04, -0.25, 0.04)
    cap = _rect(-0.46, -0.05, -0.4, 0.05)
    label = _rect(0.05, -w / 2, 0.35, w / 2)
    return [body, shoulder, neck, cap, label], [0, 0, 0, 1, 1]


def _umbrella(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    rad = r.uniform(0.3, 0.4)
    canopy = _ellipse(0, 0, rad, rad * 0.8, 16, 180, 360) + [(rad, 0.0)]
    shaft = _rect(-0.012, 0.0, 0.012, 0.42)
    hook = _arc_band(-0.05, 0.42, 0.062, 0.038, 0, 180, 8)
    return [canopy, shaft, hook], [0, 1, 1]


def _mug(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.24, 0.32), r.uniform(0.28, 0.36)
    body = _rect(-w / 2, -h / 2, w / 2, h / 2)
    handle = _arc_band(w / 2, 0.0, h * 0.3, h * 0.18, -90, 90, 9)
    return [body, handle], [0, 0]


def _spoon(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    bowl = _ellipse(0.32, 0.0, 0.16, r.uniform(0.08, 0.11), 20)
    handle = [(-0.5, -0.025), (0.18, -0.018), (0.18, 0.018), (-0.5, 0.025)]
    return [handle, bowl], [0, 0]


def _star(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    n = int(r.integers(5, 8))
    ro, ri = r.uniform(0.25, 0.35), r.uniform(0.1, 0.15)
    pts = [
        (
            (ro if k % 2 == 0 else ri) * math.cos(math.pi * k / n),
            (ro if k % 2 == 0 else ri) * math.sin(math.pi * k / n),
        )
        for k in range(2 * n)
    ]
    return [pts], [0]


_BUILDERS = {
    "pistol": _pistol,
    "revolver": _revolver,
    "rifle": _rifle,
    "knife": _knife,
    "dagger": _dagger,
    "circle": _circle,
    "box": _box,
    "phone": _phone,
    "bottle": _bottle,
    "umbrella": _umbrella,
    "mug": _mug,
    "spoon": _spoon,
    "star": _star,
}


# ----------------------------------------------------------------------------------------------------
# Options and records


@dataclass
class SynthConfig:
    """How a synthetic set is drawn. Stored next to the set as ``synth.json``.

    Attributes:
        n: number of images.
        seed: base seed; image ``i`` uses ``(seed, i)``.
        size: image side in pixels (square images).
        categories: labels to write (any of ``weapon``, ``gun``, ``knife``); only weapon shapes covered by
            them are drawn.
        positive_fraction: share of images with at least one weapon.
        val_fraction: share of images in the ``val`` split.
        test_fraction: share of images in the ``test`` split.
        min_scale: smallest object length as a fraction of the image side.
        max_scale: largest object length as a fraction of the image side.
        max_distractors: most distractor objects per image.
        image_format: ``jpg`` or ``png``.
        blur_probability: share of images slightly blurred (pixels only; masks stay exact geometry).
        start: index of the first image (to extend a set or hold out a disjoint range).
    """

    n: int = 2000
    seed: int = 0
    size: int = 224
    categories: list[str] = field(default_factory=lambda: ["weapon"])
    positive_fraction: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    min_scale: float = 0.35
    max_scale: float = 0.8
    max_distractors: int = 3
    image_format: str = "jpg"
    blur_probability: float = 0.3
    start: int = 0

    def validate(self) -> None:
        bad = [c for c in self.categories if c not in CATEGORY_KINDS]
        if bad or not self.categories:
            raise ValueError(f"unknown categories {bad}; choose from {sorted(CATEGORY_KINDS)}")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"duplicate categories in {self.categories}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError("positive_fraction must be in [0, 1]")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if not 0 < self.min_scale <= self.max_scale <= 1.5:
            raise ValueError("need 0 < min_scale <= max_scale <= 1.5")
        if self.size < 32:
            raise ValueError("size must be at least 32 pixels")

    @property
    def weapon_kinds(self) -> tuple[str, ...]:
        kinds: list[str] = []
        for c in self.categories:
            kinds += [k for k in CATEGORY_KINDS[c] if k not in kinds]
        return tuple(kinds)


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


# ----------------------------------------------------------------------------------------------------
# Drawing


def _jitter_colour(
    r: np.random.Generator, rgb: tuple[int, int, int], amount: int = 18
) -> tuple[int, int, int]:
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


def _place(
    r: np.random.Generator, polys: list[Polygon], size: int, scale: float
) -> list[list[tuple[float, float]]]:
    """Rotate, mirror, scale and translate local polygons into pixel coordinates, keeping the object in view."""
    a = r.uniform(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    mirror = -1.0 if r.random() < 0.5 else 1.0
    s = scale * size
    pts = np.concatenate([np.asarray(p, np.float64) for p in polys])
    pts_t = (
        np.stack([pts[:, 0] * mirror * ca - pts[:, 1] * sa, pts[:, 0] * mirror * sa + pts[:, 1] * ca], 1) * s
    )
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
        polys, parts = _BUILDERS[kind](r)
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


JPEG_QUALITY = 92
"""Quality of the JPEG images ``generate`` writes (tests that redraw a set encode the same way)."""


def redraw_split(cfg: SynthConfig, split: str) -> list[SynthSample]:
    """The samples of one split of the set ``cfg`` describes, drawn again in memory (as ``generate`` drew them)."""
    return [make_sample(i, cfg) for i in range(cfg.n) if split_of(i, cfg) == split]


def jpeg_bytes(img: Image.Image) -> bytes:
    """The image encoded as ``generate`` writes it (JPEG at ``JPEG_QUALITY``)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_one(i: int, cfg: SynthConfig, out: Path) -> dict[str, Any]:
    """Draw image ``i``, write its image and masks under ``out``; return its manifest row."""
    s = make_sample(i, cfg)
    name = f"{i:06d}"
    img_rel = f"images/{name}.{cfg.image_format}"
    if cfg.image_format == "jpg":
        s.image.save(out / img_rel, quality=JPEG_QUALITY)
    else:
        s.image.save(out / img_rel, compress_level=1)
    mask_rel = {}
    for cat, m in s.masks.items():
        mask_rel[cat] = f"masks/{name}_{cat}.png"
        Image.fromarray(m).save(out / mask_rel[cat], optimize=False)
    return {
        "id": f"synth-{cfg.seed}-{name}",
        "image": img_rel,
        "labels": s.labels,
        "mask": mask_rel,
        "split": split_of(i, cfg),
        "caption": s.caption,
        "background": s.background,
        "objects": [asdict(o) for o in s.objects],
    }


def _write_range(job: tuple[int, int, SynthConfig, Path]) -> list[dict[str, Any]]:
    lo, hi, cfg, out = job
    return [_write_one(i, cfg, out) for i in range(lo, hi)]


def generate(out: str | Path, cfg: SynthConfig, workers: int = 1) -> Path:
    """Write a synthetic set to ``out`` and return its manifest path.

    Args:
        out: output folder (created; existing files of the same names are overwritten).
        cfg: the options.
        workers: processes drawing images; the set is the same for any number (image ``i`` depends only on
            ``(seed, i)``, and rows are written in index order).

    Returns:
        ``out/manifest.jsonl``.
    """
    cfg.validate()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    end = cfg.start + cfg.n
    jobs = [(lo, min(lo + 250, end), cfg, out) for lo in range(cfg.start, end, 250)]
    rows = [row for part in map_in_processes(_write_range, jobs, workers) for row in part]
    manifest = write_jsonl(out / "manifest.jsonl", rows)
    write_json(out / "synth.json", asdict(cfg), indent=2)
    n_pos = sum(any(row["labels"].values()) for row in rows)
    log.info("wrote %d images (%d with weapons) to %s in %.1f s", cfg.n, n_pos, out, time.perf_counter() - t0)
    return manifest


def read_captions(
    manifest: str | Path, split: str | None = None
) -> list[tuple[Path, str, list[dict[str, object]]]]:
    """``(image path, caption, objects)`` for every row of a synthetic manifest (optionally one split)."""
    manifest = Path(manifest)
    out = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if split is not None and row.get("split") != split:
                continue
            if "caption" not in row:
                raise ValueError(
                    f"{manifest}: row {row.get('id')!r} has no caption; not a synthetic manifest?"
                )
            out.append((manifest.parent / row["image"], row["caption"], row.get("objects", [])))
    return out


# ----------------------------------------------------------------------------------------------------
# Demo samples

SAMPLE_SEED = 9000
"""Seed of the committed demo samples: disjoint from the demo model's sets (``training.demo_model``)."""

SAMPLE_FORMATS: tuple[tuple[str, str], ...] = (
    ("jpg", "RGB"),
    ("jpg", "RGB"),
    ("png", "L"),
    ("jpg", "RGB"),
    ("png", "RGBA"),
    ("jpg", "wide"),
    ("webp", "RGB"),
    ("png", "P"),
    ("jpg", "tall"),
    ("jpg", "RGB"),
)
"""Encodings the samples rotate through, so the demo also exercises grey, alpha, palette, WebP and
non-square inputs (preprocessing turns each into RGB and centre-crops it)."""


def encode_sample(img: Image.Image, fmt: str, mode: str, path: Path) -> Path:
    if mode in ("wide", "tall"):
        # A non-square canvas: the square scene on a wider or taller strip of its own edge colour.
        w, h = img.size
        size = (w + w // 2, h) if mode == "wide" else (w, h + h // 2)
        edge = tuple(int(v) for v in np.asarray(img)[0, 0])
        canvas = Image.new("RGB", size, edge)
        canvas.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
        img = canvas
    elif mode == "L":
        img = img.convert("L")
    elif mode == "P":
        img = img.quantize(colors=64)
    elif mode == "RGBA":
        # A radial alpha fade: decoders must composite it (on white) rather than read garbage colours.
        w, h = img.size
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
        alpha = np.clip(255 * (1.4 - d), 0, 255).astype(np.uint8)
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha, "L"))
    path = path.with_suffix("." + fmt)
    if fmt == "jpg":
        img.save(path, quality=85)
    elif fmt == "webp":
        img.save(path, quality=80)
    else:
        img.save(path, optimize=True)
    return path


def write_samples(out: str | Path, n: int = 16, seed: int = SAMPLE_SEED, size: int = 224) -> Path:
    """Write the demo's sample images: half with a weapon, half without, in mixed encodings.

    Files are named ``weapon_NN.*`` / ``safe_NN.*`` after their label; ``manifest.jsonl`` lists them with
    labels and captions (no masks, to keep the folder small).

    Args:
        out: output folder.
        n: number of images (even: half weapons).
        seed: generator seed; the default is disjoint from the demo model's training and test sets.
        size: side of the square scene.

    Returns:
        The manifest path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig(n=4 * n, seed=seed, size=size, blur_probability=0.0)
    want = {1: n // 2, 0: n - n // 2}
    rows = []
    i = 0
    while sum(want.values()) and i < 20 * n:
        s = make_sample(i, cfg)
        lab = int(s.labels["weapon"])
        i += 1
        if not want[lab]:
            continue
        want[lab] -= 1
        k = len(rows)
        fmt, mode = SAMPLE_FORMATS[k % len(SAMPLE_FORMATS)]
        name = f"{'weapon' if lab else 'safe'}_{k:02d}"
        path = encode_sample(s.image, fmt, mode, out / name)
        rows.append(
            {"image": path.name, "labels": {"weapon": lab}, "caption": s.caption, "id": f"sample-{k:02d}"}
        )
    return write_jsonl(out / "manifest.jsonl", rows)


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("out", help="output folder")
    parser.add_argument("-n", "--num", type=int, default=d.n, help=f"number of images (default {d.n})")
    parser.add_argument("--seed", type=int, default=d.seed, help="base seed (default 0)")
    parser.add_argument("--start", type=int, default=d.start, help="index of the first image (default 0)")
    parser.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    parser.add_argument(
        "--categories",
        default=",".join(d.categories),
        help=f"comma-separated labels to write, from {sorted(CATEGORY_KINDS)} (default: weapon)",
    )
    parser.add_argument("--positive-fraction", type=float, default=d.positive_fraction)
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction)
    parser.add_argument(
        "--min-scale", type=float, default=d.min_scale, help="smallest object, fraction of side"
    )
    parser.add_argument(
        "--max-scale", type=float, default=d.max_scale, help="largest object, fraction of side"
    )
    parser.add_argument("--max-distractors", type=int, default=d.max_distractors)
    parser.add_argument("--format", dest="image_format", choices=("jpg", "png"), default=d.image_format)
    parser.add_argument(
        "--samples",
        action="store_true",
        help=f"write the demo's sample images instead (default seed {SAMPLE_SEED}, -n 16, mixed encodings)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (same set for any)")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(
        n=args.num,
        seed=args.seed,
        size=args.size,
        categories=[c.strip() for c in args.categories.split(",") if c.strip()],
        positive_fraction=args.positive_fraction,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        min_scale=args.min_scale,
        max_scale=args.max_scale,
        max_distractors=args.max_distractors,
        image_format=args.image_format,
        start=args.start,
    )


@exits_2_on_bad_input("synth")
def run(args: argparse.Namespace) -> int:
    """``dangerclip synth``: write a synthetic set (or the demo's samples) and print its manifest path."""
    if args.samples:
        n = args.num if args.num != SynthConfig().n else 16
        seed = args.seed if args.seed != SynthConfig().seed else SAMPLE_SEED
        print(write_samples(args.out, n=n, seed=seed, size=args.size))
        return 0
    cfg = config_from_args(args)
    cfg.validate()
    manifest = generate(args.out, cfg, workers=args.workers)
    print(manifest)
    return 0
