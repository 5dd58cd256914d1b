"""Box selection, NMS, captions and the box → mask → patch-grid geometry, without models."""

from __future__ import annotations

import numpy as np
import pytest

from dangerclip.runtime.card import PreprocessConfig
from pseudomask.geometry import (
    Detections,
    box_iou,
    build_caption,
    cxcywh_to_xyxy,
    masks_to_grid,
    nms,
    select_boxes,
)
from pseudomask.segmenters import BoxSegmenter


def test_cxcywh_to_xyxy_scales_and_clips():
    b = cxcywh_to_xyxy(np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.4, 0.4]]), width=200, height=100)
    np.testing.assert_allclose(b[0], [50, 25, 150, 75])
    np.testing.assert_allclose(b[1], [0, 0, 40, 20])  # clipped at the image's top-left corner


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0], rtol=1e-6)


def test_nms_handles_no_boxes_and_all_identical_boxes():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    boxes = np.tile(np.array([[1, 1, 9, 9]], np.float32), (900, 1))
    keep = nms(boxes, np.ones(900, np.float32), 0.5)
    assert keep.tolist() == [0]  # saturated scores: the first one wins, deterministically


def test_nms_keeps_disjoint_boxes_in_score_order():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.6, 0.9, 0.7], np.float32), 0.5)
    assert keep.tolist() == [1, 2]


def test_select_boxes_threshold_min_size_and_cap():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(10)] + [[0, 0, 0.5, 10]], np.float32)
    scores = np.array([0.9, 0.3, 0.8, 0.36, 0.35, 0.7, 0.6, 0.5, 0.4, 0.95, 0.99], np.float32)
    det = Detections(boxes, scores, [f"p{i}" for i in range(11)])
    out = select_boxes(det, box_threshold=0.35, iou_threshold=0.5, max_boxes=3)
    # 0.35 is not above the threshold, the 0.5-px-wide box is degenerate, then the best three.
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert out.phrases == ["p9", "p0", "p2"]
    empty = select_boxes(det, box_threshold=0.999, iou_threshold=0.5, max_boxes=3)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    assert len(select_boxes(Detections(), box_threshold=0.1, iou_threshold=0.5, max_boxes=5)) == 0


def test_build_caption_spans_every_phrase():
    caption, spans = build_caption({"weapon": ["Gun", "knife."], "fire": ["fire"]})
    assert caption == "gun . knife . fire ."
    assert [(c, caption[a:b]) for c, (a, b) in spans] == [("weapon", "gun"), ("weapon", "knife"), ("fire", "fire")]
    with pytest.raises(ValueError, match="empty"):
        build_caption({"x": [" . "]})


def test_box_segmenter_pixel_rule_and_grid_geometry():
    """A 448x448 image, one box over the top-left 64x96 pixels: on a 224/14x14 grid (16-px patches after
    the 2x downscale) that is exactly patches rows 0-2, cols 0-1."""
    seg = BoxSegmenter()
    emb = seg.embed([np.zeros((448, 448, 3), np.uint8)])[0]
    masks = seg.segment(emb, np.array([[0, 0, 64, 96]], np.float32), [0], 1)
    assert masks[0].shape == (448, 448)
    assert masks[0].sum() == 64 * 96 and masks[0][:96, :64].all()
    grid = masks_to_grid(masks, (14, 14), PreprocessConfig())
    expected = np.zeros((1, 14, 14), np.float32)
    expected[0, :3, :2] = 1.0
    # The resize filter blurs the edge by a pixel (< 2% of a 16-px patch); the mass is exact.
    np.testing.assert_allclose(grid, expected, atol=0.02)
    assert grid.sum() == pytest.approx(6.0, abs=1e-3)


def test_grid_follows_the_centre_crop():
    """A wide image loses its sides to the crop: a box in the cropped-off strip leaves the grid empty,
    and a box in the centre lands on the centre patches."""
    seg = BoxSegmenter()
    emb = seg.embed([np.zeros((224, 448, 3), np.uint8)])[0]
    left, centre = seg.segment(emb, np.array([[0, 0, 100, 224], [208, 96, 240, 128]], np.float32), [0, 1], 2)
    grid = masks_to_grid([left, centre], (14, 14), PreprocessConfig())
    assert grid[0].max() == 0.0  # x < 112 is cropped away
    expected = np.zeros((14, 14), np.float32)
    expected[6:8, 6:8] = 1.0  # x 208-240 → crop x 96-128 → cols 6-7; y 96-128 → rows 6-7
    np.testing.assert_allclose(grid[1], expected, atol=0.02)
