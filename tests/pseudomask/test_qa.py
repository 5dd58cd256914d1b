"""QA overlays: masks tinted in each category's colour, boxes drawn, sizes kept legible."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pseudomask.geometry import Detections
from pseudomask.qa import COLOURS, overlay


def _dets(boxes: list[list[float]], score: float = 0.9) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), score, np.float32), ["x"])


def test_masks_are_tinted_and_boxes_drawn_in_the_category_colour() -> None:
    image = Image.new("RGB", (400, 400), (100, 100, 100))
    mask = np.zeros((400, 400), bool)
    mask[200:300, 200:300] = True
    out = np.asarray(overlay(image, ["gun", "knife"], [mask, np.zeros_like(mask)],
                             [_dets([[20, 40, 120, 140]]), Detections()], alpha=0.5))  # fmt: skip
    assert out.shape == (400, 400, 3)
    tint = (np.asarray([100.0] * 3) * 0.5 + np.asarray(COLOURS[0]) * 0.5).astype(np.uint8)
    assert np.abs(out[250, 250].astype(int) - tint).max() <= 1  # inside the mask
    assert tuple(out[350, 350]) == (100, 100, 100)  # outside it, the image as it was
    assert tuple(out[90, 20]) == COLOURS[0]  # the box's left edge, in the first category's colour


def test_large_images_shrink_small_ones_grow_and_the_title_has_a_bar() -> None:
    big = overlay(Image.new("RGB", (1600, 800)), ["gun"], [np.zeros((800, 1600), bool)], [Detections()])
    assert big.size == (768, 384)
    grey = Image.new("RGB", (100, 50), (128, 128, 128))
    small = overlay(grey, ["gun"], [np.zeros((50, 100), bool)], [Detections()], title="img-7 [gun]")
    assert small.size == (384, 192)
    bar, below = np.asarray(small)[:12], np.asarray(small)[13:]
    assert (bar == 0).mean() > 0.8 and bar.max() > 200  # light text on a black bar
    assert (below == 128).all()
    box = _dets([[10, 10, 50, 40]])
    scaled = np.asarray(overlay(Image.new("RGB", (100, 50)), ["gun"], [np.zeros((50, 100), bool)], [box]))
    assert tuple(scaled[int(25 * 3.84), int(10 * 3.84)]) == COLOURS[0]  # boxes scale with the image
