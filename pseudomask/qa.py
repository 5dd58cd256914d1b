"""QA overlays: the image with each category's mask tinted and its boxes drawn, for checking by eye."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pseudomask.geometry import Detections

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def overlay(
    image: Image.Image,
    categories: Sequence[str],
    masks: Sequence[np.ndarray],
    detections: Sequence[Detections],
    *,
    title: str = "",
    max_side: int = 768,
    min_side: int = 384,
    alpha: float = 0.45,
) -> Image.Image:
    """Draw masks and boxes on a copy of the image, its long side scaled into ``[min_side, max_side]``.

    Args:
        image: the RGB image.
        categories: names, one per mask.
        masks: ``[H, W]`` bool masks at the image's resolution.
        detections: the kept boxes per category (pixel coordinates of ``image``).
        title: a line written at the top (image id, label).
    """
    long = max(image.size)
    # Large images shrink to keep the sheets small; tiny ones grow so labels and boxes stay legible.
    scale = min(1.0, max_side / long) if long >= min_side else min_side / long
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
    for k, m in enumerate(masks):
        mm = np.asarray(Image.fromarray(np.asarray(m, np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        c = np.float32(COLOURS[k % len(COLOURS)])
        base[mm] = base[mm] * (1 - alpha) + c * alpha
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for k, (cat, det) in enumerate(zip(categories, detections, strict=True)):
        c = COLOURS[k % len(COLOURS)]
        for box, score, phrase in zip(det.boxes, det.scores, det.phrases or [""] * len(det), strict=True):
            x0, y0, x1, y1 = (float(v) * scale for v in box)
            draw.rectangle([x0, y0, x1, y1], outline=c, width=2)
            draw.text((x0 + 2, y0 + 1), f"{phrase or cat} {float(score):.2f}", fill=c)
    if title:
        draw.rectangle([0, 0, size[0], 12], fill=(0, 0, 0))
        draw.text((2, 0), title[:120], fill=(255, 255, 255))
    return out
