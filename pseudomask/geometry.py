"""Pure box and mask geometry: thresholds, non-maximum suppression, box→mask union, masks on the grid.

numpy only, so the geometry is testable without a model and identical on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.preprocess import mask_to_grid


@dataclass
class Detections:
    """Boxes found for one category in one image.

    Attributes:
        boxes: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` in pixels of the original image.
        scores: ``[N]`` float32 box scores (sigmoid of the best logit over the category's tokens).
        phrases: ``N`` phrases, the caption tokens above the text threshold for each box.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    phrases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def cxcywh_to_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ``[N, 4]`` centre boxes → pixel corner boxes, clipped to the image.

    Args:
        boxes: ``[N, 4]`` ``(cx, cy, w, h)`` in [0, 1], as DETR-style detectors predict them.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` in pixels, inside ``[0, width] × [0, height]``.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * np.float32(
        [width, height, width, height]
    )
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` corner boxes → ``[N, M]``."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[N, 4]`` corner boxes.
        scores: ``[N]`` scores.
        iou_threshold: a box is dropped when its IoU with a higher-scoring kept box exceeds this.

    Returns:
        Indices of the kept boxes, highest score first (``[K]`` int64; empty for no boxes).
    """
    n = int(boxes.shape[0])
    if n == 0:
        return np.zeros((0,), np.int64)
    # Stable sort so equal scores (common with saturated random-weight logits) keep input order.
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def select_boxes(
    det: Detections,
    *,
    box_threshold: float,
    iou_threshold: float,
    max_boxes: int,
    min_size: float = 1.0,
) -> Detections:
    """Threshold, drop degenerate boxes, suppress overlaps and keep the ``max_boxes`` best.

    Handles the degenerate outputs of untrained detectors: no box above the threshold gives an empty
    result, every box above it is bounded by NMS and ``max_boxes``.

    Args:
        det: candidate boxes of one category.
        box_threshold: keep scores strictly above this.
        iou_threshold: NMS IoU threshold.
        max_boxes: upper bound on boxes kept (by score).
        min_size: boxes narrower or shorter than this many pixels are dropped (SAM cannot use them).
    """
    if len(det) == 0:
        return Detections()
    b, s = det.boxes, det.scores
    ok = (s > box_threshold) & ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return Detections()
    keep = idx[nms(b[idx], s[idx], iou_threshold)][: max(int(max_boxes), 0)]
    return Detections(
        boxes=b[keep].astype(np.float32),
        scores=s[keep].astype(np.float32),
        phrases=[det.phrases[i] for i in keep] if det.phrases else [""] * len(keep),
    )


def union_masks(masks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Union of ``[N, H, W]`` boolean masks into ``[H, W]`` (into ``out`` when given, to chunk work)."""
    m = np.asarray(masks, bool)
    u = m.any(axis=0) if m.shape[0] else np.zeros(m.shape[1:], bool)
    if out is None:
        return u
    np.logical_or(out, u, out=out)
    return out


def masks_to_grid(masks: Sequence[np.ndarray], grid: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """Per-category full-resolution masks → ``[k, h, w]`` float32 fraction covered per patch.

    Uses ``dangerclip.runtime.preprocess.mask_to_grid``, so patch ``(i, j)`` covers exactly the pixels the
    DangerCLIP model sees in its patch ``(i, j)`` after the same resize and centre crop.
    """
    if not masks:
        return np.zeros((0, *grid), np.float32)
    return np.stack([mask_to_grid(m, grid, cfg) for m in masks]).astype(np.float32)


def token_spans(caption: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of each phrase in the caption, searched left to right.

    Raises:
        ValueError: a phrase that is not in the caption.
    """
    spans = []
    start = 0
    for p in phrases:
        i = caption.find(p, start)
        if i < 0:
            raise ValueError(f"phrase {p!r} not found in caption {caption!r}")
        spans.append((i, i + len(p)))
        start = i + len(p)
    return spans


def build_caption(captions: dict[str, list[str]]) -> tuple[str, list[tuple[str, tuple[int, int]]]]:
    """One GroundingDINO caption for every category, and where each category's phrases lie in it.

    GroundingDINO reads several phrases separated by `` . ``; one forward pass then scores every query
    against every token, so all categories cost one pass.

    Args:
        captions: ``{category: [phrase, ...]}``; the phrases are what the detector looks for.

    Returns:
        ``(caption, [(category, (char_start, char_end)), ...])`` with one entry per phrase.
    """
    cats: list[str] = []
    phrases: list[str] = []
    for cat, ps in captions.items():
        for p in ps:
            p = " ".join(p.lower().replace(".", " ").split())
            if not p:
                raise ValueError(f"empty detection phrase for category {cat!r}")
            cats.append(cat)
            phrases.append(p)
    caption = " . ".join(phrases) + " ."
    return caption, list(zip(cats, token_spans(caption, phrases), strict=True))
