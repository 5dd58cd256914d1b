"""Metrics against numbers worked out by hand on a fixed prediction set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as M

# Sorted by score: labels read 1 1 0 1 0 0 1 0.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0])


def test_counts_precision_recall_f1_at_threshold() -> None:
    c = M.counts_at(SCORES, LABELS, 0.5)
    # Predicted positive: .9 .8 .7 .6 .55 -> tp 3 (.9 .8 .6), fp 2 (.7 .55); fn 1 (.3); tn 2 (.4 .2).
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 2)
    assert c.precision == pytest.approx(3 / 5)
    assert c.recall == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert c.confusion_matrix() == [[2, 2], [1, 3]]
    # The threshold itself counts as positive.
    assert M.counts_at(SCORES, LABELS, 0.6).tp == 3


def test_average_precision_by_hand() -> None:
    # Precision at each positive's rank: 1/1, 2/2, 3/4, 4/7; each recall step is 1/4.
    assert M.average_precision(SCORES, LABELS) == pytest.approx((1 + 1 + 0.75 + 4 / 7) / 4)
    assert math.isnan(M.average_precision(SCORES, np.zeros(8, int)))


def test_roc_auc_by_hand_and_ties() -> None:
    # Positive-over-negative pairs: .9 beats 4, .8 beats 4, .6 beats 3, .3 beats 1 -> 12 of 16.
    assert M.roc_auc(SCORES, LABELS) == pytest.approx(12 / 16)
    assert M.roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert M.roc_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(3.5 / 4)
    assert math.isnan(M.roc_auc(SCORES, np.ones(8, int)))


def test_pr_curve_groups_ties() -> None:
    p, r, t = M.precision_recall_curve(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    assert t.tolist() == [0.9, 0.5, 0.1]
    assert p.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.5, 1.0, 1.0])


def test_threshold_best_f1_and_min_precision() -> None:
    # F1 per threshold: .9:.4 .8:.667 .7:.571 .6:.75 .55:.667 .4:.6 .3:.727 .2:.667 -> best at .6,
    # placed half way to the next lower score .55.
    assert M.choose_threshold(SCORES, LABELS) == pytest.approx(0.575)
    # Precision >= 0.9 only at .9 and .8; .8 has the higher recall -> half way to .7.
    assert M.choose_threshold(SCORES, LABELS, target="precision", min_precision=0.9) == pytest.approx(0.75)
    # Unreachable precision falls back to the most precise threshold (the top score, first among ties).
    assert M.choose_threshold(SCORES, LABELS, target="precision", min_precision=1.01) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="expected 'f1' or 'precision'"):
        M.choose_threshold(SCORES, LABELS, target="recall")


def test_classification_and_multilabel_reports() -> None:
    rep = M.classification_report(SCORES, LABELS, 0.575)
    assert (rep["tp"], rep["fp"], rep["fn"], rep["tn"]) == (3, 1, 1, 3)
    assert rep["f1"] == pytest.approx(0.75)
    s2 = np.stack([SCORES, 1 - SCORES], axis=1)
    y2 = np.stack([LABELS, 1 - LABELS], axis=1)
    ml = M.multilabel_report(s2, y2, [0.575, 0.5], ["gun", "knife"])
    assert ml["per_category"]["gun"]["f1"] == pytest.approx(0.75)
    # Category 2 mirrors it: 1-s >= .5 flags .6 .7 .8 (from .4 .3 .2), positives .6 and .8 -> tp 2.
    assert ml["per_category"]["knife"]["tp"] == 2
    assert ml["macro"]["roc_auc"] == pytest.approx(0.75)
    assert "any" in ml


def test_localisation_by_hand() -> None:
    maps = np.array([[0.1, 0.7, 0.6, 0.2], [0.9, 0.1, 0.3, 0.2], [0.8, 0.1, 0.1, 0.1]])
    masks = np.array([[0, 1, 0.6, 0.2], [0, 0, 1, 0.3], [0, 0, 0, 0]])
    labels = np.array([1, 1, 0])
    valid = np.array([True, True, True])
    rep = M.localisation_report(maps, masks, labels, valid, map_threshold=0.65)
    # Image 1: top-2 = patches 1,2 = the mask -> 1; peak on patch 1 -> hit; >=.65 is {1} -> 1/2.
    # Image 2: top-1 = patch 0, mask {2} -> 0; peak misses; >=.65 is {0} -> 0.
    assert rep["n"] == 2
    assert rep["topk_iou"] == pytest.approx(0.5)
    assert rep["pointing"] == pytest.approx(0.5)
    assert rep["iou"] == pytest.approx(0.25)
    assert rep["peak_above_threshold"] == pytest.approx(1.0)
    assert rep["negative_area"] == pytest.approx(0.25)
    # At .5: image 1 -> {1,2} = mask -> 1; image 2 -> {0} -> 0.
    assert rep["iou@0.5"] == pytest.approx(0.5)


def test_binarize_keeps_small_objects_and_choose_map_threshold() -> None:
    on = M.binarize_mask(np.array([[0.1, 0.3, 0.0], [0.6, 0.2, 0.0]]))
    assert on.tolist() == [[False, True, False], [True, False, False]]
    maps = np.array([[0.1, 0.35, 0.3, 0.05]])
    masks = np.array([[0, 1, 1, 0]])
    # Any threshold in (0.1, 0.3] selects exactly the mask; the highest such candidate wins.
    t = M.choose_map_threshold(maps, masks, np.array([1]), np.array([True]), candidates=np.array([0.05, 0.2, 0.3, 0.4]))
    assert t == pytest.approx(0.3)
    assert M.choose_map_threshold(maps, masks, np.array([0]), np.array([True])) == 0.5
    # Uncalibrated maps far below the fixed grid: the cut is found among the map's own values.
    tiny = np.array([[1e-4, 3e-3, 2e-3, 5e-4]])
    assert M.choose_map_threshold(tiny, masks, np.array([1]), np.array([True])) == pytest.approx(2e-3)


def test_scikit_learn_figures_equal_the_hand_written_ones() -> None:
    # Reference values from the numpy implementations these replaced (commit 81caa24), on 400 scores
    # rounded to two decimals so that ties are common.
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.3).astype(int)
    s = np.round(np.clip(0.35 * y + rng.normal(0.4, 0.2, 400), 0, 1), 2)
    assert M.average_precision(s, y) == pytest.approx(0.816238859026799, abs=1e-12)
    assert M.roc_auc(s, y) == pytest.approx(0.9092825742396603, abs=1e-12)
    p, r, t = M.precision_recall_curve(s, y)
    assert len(t) == 93 == len(np.unique(s)) and (np.diff(t) < 0).all()
    assert (float(p.sum()), float(r.sum()), float(t.sum())) == pytest.approx(
        (56.78574079530252, 69.31092436974791, 46.35), abs=1e-9
    )
    assert M.choose_threshold(s, y) == pytest.approx(0.565)
    assert M.choose_threshold(s, y, target="precision", min_precision=0.8) == pytest.approx(0.685)
    p0, r0, t0 = M.precision_recall_curve(s, np.zeros(400, int))
    assert len(t0) == 93 and not p0.any() and not r0.any()
    assert math.isnan(M.roc_auc(np.zeros(0), np.zeros(0, int)))


def test_by_object_size_splits_positives_by_the_area_their_mask_covers():
    P = 196  # a 14 x 14 grid
    masks, maps, scores, labels = [], [], [], []
    for covered, score in ((2, 0.2), (3, 0.3), (20, 0.9), (30, 0.4), (120, 0.95), (0, 0.1)):  # last: a negative
        m = np.zeros(P)
        m[:covered] = 1.0
        peak = np.zeros(P)
        peak[0 if covered else 100] = 1.0  # each map peaks on its object
        masks.append(m)
        maps.append(peak)
        scores.append(score)
        labels.append(1 if covered else 0)
    out = M.by_object_size(
        np.array(scores), np.array(maps), np.array(masks), np.array(labels), np.ones(6, bool), 0.5, 0.5
    )
    assert {k: v["n"] for k, v in out.items()} == {"small": 2, "medium": 2, "large": 1}  # 2/196, 3/196 < 1/49
    assert out["small"]["recall"] == 0.0 and out["medium"]["recall"] == 0.5 and out["large"]["recall"] == 1.0
    assert all(v["pointing"] == 1.0 for v in out.values())
    none = np.zeros((1, P))
    empty = M.by_object_size(np.array([0.9]), none, none, np.array([0]), np.ones(1, bool), 0.5, 0.5)
    assert all(v["n"] == 0 and np.isnan(v["recall"]) for v in empty.values())
