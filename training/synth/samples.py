"""The demo's committed sample images: half with a weapon, in the upload encodings the service must handle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dangerclip.runtime.files import write_jsonl
from training.synth.config import SynthConfig
from training.synth.scene import make_sample

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
    """Save ``img`` at ``path`` with the suffix ``fmt`` in one of ``SAMPLE_FORMATS``' modes; returns the file.

    ``mode`` is a Pillow mode (``RGB``, ``L``, ``P``, ``RGBA`` with a radial alpha fade) or ``wide``/``tall``
    (the scene on a non-square canvas).
    """
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
        rows.append({"image": path.name, "labels": {"weapon": lab}, "caption": s.caption, "id": f"sample-{k:02d}"})
    return write_jsonl(out / "manifest.jsonl", rows)
