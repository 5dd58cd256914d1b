"""The segmenter interface, and the box segmenter (each box is its own mask: no SAM needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Segmenter(Protocol):
    """Boxes → per-category masks. ``SamSegmenter`` is the real one."""

    def embed(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Per-image state computed once and reused for all of the image's boxes."""
        ...

    def segment(self, embedding: Any, boxes: np.ndarray, groups: Sequence[int], n_groups: int) -> list[np.ndarray]:
        """``n_groups`` bool ``[H, W]`` masks, the union of the masks of each group's boxes."""
        ...


class BoxSegmenter:
    """Fills each box: box-shaped pseudo-masks, a fast baseline and the reference for geometry tests."""

    def embed(self, images: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        return [tuple(im.shape[:2]) for im in images]  # type: ignore[misc]

    def segment(
        self, embedding: tuple[int, int], boxes: np.ndarray, groups: Sequence[int], n_groups: int
    ) -> list[np.ndarray]:
        h, w = embedding
        out = [np.zeros((h, w), bool) for _ in range(n_groups)]
        for (x0, y0, x1, y1), g in zip(np.asarray(boxes, np.float32).reshape(-1, 4), groups, strict=True):
            # Pixel (x, y) is inside when its centre is: the rule SAM's box prompts and masks follow.
            c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
            r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
            out[int(g)][max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
        return out
