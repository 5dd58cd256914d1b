"""Labelled image folders (``<root>/<class>/*.jpg``), their stratified splits, and torch datasets over them.

The classification layout of CrawledFirearmsRGB-style data and of ``dangerclip firearms``' output. Splits are
per class and deterministic (sorted files, seeded shuffle), so every class is in train, val and test — unlike
retrieval, where classes are disjoint. ``unlabelled`` images (another folder, any layout) may be added to
pre-training only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dangerclip.runtime.preprocess import IMAGE_SUFFIXES, load_image


@dataclass(frozen=True)
class Item:
    path: Path
    label: int


@dataclass
class Splits:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]

    def counts(self) -> dict[str, int]:
        return {"classes": len(self.classes), "train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_splits(root: str | Path, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Splits:
    """Stratified splits of ``root/<class>/`` images.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: fewer than two classes, or a class with fewer than three images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} (expected <root>/<class>/*.jpg)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images(d))
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least two class folders with images, found {classes}")
    out = Splits(classes, [], [], [])
    for k, c in enumerate(classes):
        files = _images(root / c)
        if len(files) < 3:
            raise ValueError(f"{root / c}: {len(files)} images; a class needs at least 3 (train, val, test)")
        random.Random(f"{seed}:{c}").shuffle(files)
        n_val = max(1, round(len(files) * val))
        n_test = max(1, round(len(files) * test))
        out.test += [Item(p, k) for p in files[:n_test]]
        out.val += [Item(p, k) for p in files[n_test : n_test + n_val]]
        out.train += [Item(p, k) for p in files[n_test + n_val :]]
    return out


def keep_labels(splits: Splits, fraction: float) -> tuple[Splits, list[Item]]:
    """``splits`` with only ``fraction`` of each class's train images (at least one, taken in the split's seeded
    order) still labelled, and the others as unlabelled items (label -1) for pre-training."""
    if fraction >= 1:
        return splits, []
    kept: list[Item] = []
    rest: list[Item] = []
    for k in range(len(splits.classes)):
        items = [i for i in splits.train if i.label == k]
        n = max(1, round(len(items) * fraction))
        kept += items[:n]
        rest += [Item(i.path, -1) for i in items[n:]]
    return Splits(splits.classes, kept, splits.val, splits.test), rest


def unlabelled(folder: str | Path) -> list[Item]:
    """Every image under ``folder`` with label -1 (pre-training only)."""
    return [Item(p, -1) for p in _images(Path(folder))]


class ImageSet:
    """A torch-style dataset: ``(transform(image), label)``; images decoded once and kept (small sets)."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Image.Image], Any], cache: bool = True) -> None:
        self.items = list(items)
        self.transform = transform
        self._cache: dict[int, Image.Image] = {}
        self._keep = cache

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        if i in self._cache:
            return self._cache[i]
        img = load_image(self.items[i].path)
        if self._keep:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.image(i)), self.items[i].label
