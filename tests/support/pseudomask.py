"""Helpers for the pseudo-mask tests: generated images and datasets, a stub detector."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_image(path: Path, w: int, h: int, seed: int) -> Path:
    """A coloured background with a dark bar (the "weapon") at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(90, 250, 3)))
    d = ImageDraw.Draw(im)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    d.rectangle([x0, y0, x0 + w // 3, y0 + h // 8], fill=(20, 20, 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def make_dataset(root: Path, n_pos: int = 4, n_neg: int = 1, corrupt: bool = True) -> Path:
    """A manifest with positives, negatives and (optionally) a corrupt image; returns the manifest path."""
    recs = []
    for i in range(n_pos):
        p = make_image(root / "img" / f"pos_{i}.{'png' if i % 2 else 'jpg'}", 96 + 16 * i, 80 + 8 * i, i)
        recs.append({"image": str(p.relative_to(root)), "label": 1, "split": "train"})
    for i in range(n_neg):
        p = make_image(root / "img" / f"neg_{i}.png", 72, 72, 100 + i)
        recs.append({"image": str(p.relative_to(root)), "label": 0, "split": "train"})
    if corrupt:
        bad = root / "img" / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
        recs.append({"image": "img/broken.jpg", "label": 1})
    m = root / "train.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return m


class StubDetector:
    """Returns fixed candidate boxes for every image; counts its calls."""

    def __init__(self, per_category: dict, fail_on: Sequence[int] = ()) -> None:
        self.per_category = per_category
        self.calls = 0
        self.fail_on = set(fail_on)

    def detect(self, images):
        from pseudomask.geometry import Detections

        self.calls += 1
        if self.calls in self.fail_on:
            raise KeyboardInterrupt
        out = []
        for _ in images:
            out.append(
                {
                    c: Detections(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32), [c] * len(s))
                    for c, (b, s) in self.per_category.items()
                }
            )
        return out
