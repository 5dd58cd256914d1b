"""``SynthConfig``: how a synthetic set is drawn; stored beside the set as ``synth.json``."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.synth.vocabulary import CATEGORY_KINDS


@dataclass
class SynthConfig:
    """How a synthetic set is drawn. Stored next to the set as ``synth.json``."""

    n: int = 2000
    """Number of images."""
    seed: int = 0
    """Base seed; image ``i`` uses ``(seed, i)``."""
    size: int = 224
    """Image side in pixels (square images)."""
    categories: list[str] = field(default_factory=lambda: ["weapon"])
    """Labels to write (any of ``weapon``, ``gun``, ``knife``); only weapon shapes covered by them are drawn."""
    positive_fraction: float = 0.5
    """Share of images with at least one weapon."""
    val_fraction: float = 0.1
    """Share of images in the ``val`` split."""
    test_fraction: float = 0.1
    """Share of images in the ``test`` split."""
    min_scale: float = 0.35
    """Smallest object length as a fraction of the image side."""
    max_scale: float = 0.8
    """Largest object length as a fraction of the image side."""
    max_distractors: int = 3
    """Most distractor objects per image."""
    image_format: str = "jpg"
    """``jpg`` or ``png``."""
    blur_probability: float = 0.3
    """Share of images slightly blurred (pixels only; masks stay exact geometry)."""
    start: int = 0
    """Index of the first image (to extend a set or hold out a disjoint range)."""

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
        if self.n < 1 or self.start < 0:
            raise ValueError(f"need at least one image (-n {self.n}) and a start index >= 0 (--start {self.start})")

    @property
    def weapon_kinds(self) -> tuple[str, ...]:
        kinds: list[str] = []
        for c in self.categories:
            kinds += [k for k in CATEGORY_KINDS[c] if k not in kinds]
        return tuple(kinds)
