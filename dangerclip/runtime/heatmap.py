"""Danger maps: their per-category summary and overlays as images (numpy and Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.preprocess import resize_and_crop, to_rgb

AREA_THRESHOLD = 0.5
"""A patch counts toward a category's ``area`` when its probability is at least this."""


def map_peaks(categories: list[str], maps: np.ndarray) -> dict[str, dict[str, object]]:
    """Per category: the peak probability, its patch ``[row, col]``, and the share of patches ≥ 0.5.

    Args:
        categories: ``k`` names, in the maps' order.
        maps: ``[k, h, w]`` patch probabilities of one image.

    Returns:
        ``{category: {"peak": float, "peak_at": [row, col], "area": float}}``, rounded to 4 decimals (what the
        result messages and ``dangerclip score`` print).
    """
    out: dict[str, dict[str, object]] = {}
    for j, c in enumerate(categories):
        m = np.asarray(maps[j])
        r, col = np.unravel_index(int(np.argmax(m)), m.shape)
        out[c] = {
            "peak": round(float(m[r, col]), 4),
            "peak_at": [int(r), int(col)],
            "area": round(float((m >= AREA_THRESHOLD).mean()), 4),
        }
    return out


def overlay(image: Image.Image, grid_map: np.ndarray, cfg: PreprocessConfig, alpha: float = 0.55) -> Image.Image:
    """The model's view of ``image`` (resized and centre-cropped) with a ``[h, w]`` map blended in red.

    The map is upsampled bilinearly to the crop; opacity follows the map's value, so safe patches show the
    image as it is.
    """
    view = resize_and_crop(to_rgb(image), cfg)
    m = np.clip(np.asarray(grid_map, np.float32), 0.0, 1.0)
    up = Image.fromarray(m).resize(view.size, Image.Resampling.BILINEAR)
    a = np.asarray(up, np.float32)[..., None] * alpha
    base = np.asarray(view, np.float32)
    red = np.broadcast_to(np.array([255.0, 32.0, 0.0], np.float32), base.shape)
    out = base * (1 - a) + red * a
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
