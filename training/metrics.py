"""Evaluation metrics: classification, threshold choice and localisation.

The ranking figures (PR curve, AP, ROC-AUC) are scikit-learn's, the field's reference; what is ours is
small enough to check by hand (the tests do): counts at a threshold, the threshold choice, and the
localisation of danger maps. Nothing here needs torch.

Conventions:
    * ``scores`` are probabilities in [0, 1]; an item is predicted positive when ``score >= threshold``.
    * ``labels`` are 0/1.
    * Danger maps and masks live on the patch grid; a mask patch counts as "on" when at least half of it
      is covered (``binarize_mask``), so a map is never asked to find slivers it cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

MASK_ON = 0.5
"""Coverage from which a patch of a grid mask counts as part of the object."""


@dataclass(frozen=True)
class BinaryCounts:
    """Confusion counts at one threshold."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        # Nothing predicted positive: precision is undefined; 0 is the conservative reading (sklearn's too).
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def accuracy(self) -> float:
        n = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / n if n else 0.0

    def confusion_matrix(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]``: rows are the truth (0, 1), columns the prediction (0, 1)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(np.int64)


def counts_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> BinaryCounts:
    """Confusion counts for ``score >= threshold``.

    Args:
        scores: ``[n]`` probabilities.
        labels: ``[n]`` 0/1.
        threshold: decision threshold.
    """
    s, y = _check(scores, labels)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return BinaryCounts(tp, fp, fn, tn)


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as the threshold (scikit-learn's curve).

    Args:
        scores: ``[n]`` probabilities.
        labels: ``[n]`` 0/1.

    Returns:
        ``(precision [m], recall [m], thresholds [m])`` with thresholds decreasing, so recall grows.
        Entry ``i`` is for the rule ``score >= thresholds[i]``: scikit-learn's curve read from the highest
        threshold down, without the ``(precision 1, recall 0)`` end point it adds. Without positives,
        precision and recall are 0 at every threshold.
    """
    s, y = _check(scores, labels)
    if y.sum() == 0:
        t = np.unique(s)[::-1]
        return np.zeros_like(t), np.zeros_like(t), t
    p, r, t = skm.precision_recall_curve(y, s, drop_intermediate=False)
    return p[:-1][::-1], r[:-1][::-1], t[::-1]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP as the step-wise area under the PR curve: ``sum_i (R_i - R_{i-1}) P_i`` (scikit-learn's).

    Returns NaN when there is no positive.
    """
    s, y = _check(scores, labels)
    if y.sum() == 0:
        return float("nan")
    return float(skm.average_precision_score(y, s))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's): the probability that a positive outranks a negative, ties
    counting ½.

    Returns NaN unless both classes are present.
    """
    s, y = _check(scores, labels)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, *, target: str = "f1", min_precision: float | None = None
) -> float:
    """Pick a decision threshold on held-out data.

    Args:
        scores: ``[n]`` validation probabilities.
        labels: ``[n]`` 0/1.
        target: ``"f1"`` (best F1) or ``"precision"`` (the highest recall whose precision is at least
            ``min_precision``; falls back to the most precise threshold when none reaches it).
        min_precision: needed for ``target="precision"``.

    Returns:
        The threshold. It is placed half way between the chosen score and the next lower distinct score,
        so that a model scoring the same images a hair differently (ONNX vs torch, fp16) decides the same.
        Ties in the target go to the higher threshold (fewer alarms). 0.5 when there are no positives.
    """
    s, y = _check(scores, labels)
    if y.sum() == 0 or s.size == 0:
        return 0.5
    p, r, t = precision_recall_curve(s, y)
    if target == "f1":
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        i = int(np.argmax(f1))  # first max = highest threshold among ties
    elif target == "precision":
        if min_precision is None:
            raise ValueError("target='precision' needs min_precision")
        ok = np.nonzero(p >= min_precision)[0]
        if ok.size:
            # Highest recall among the thresholds that are precise enough; highest threshold among ties.
            best_r = r[ok].max()
            i = int(ok[np.nonzero(r[ok] == best_r)[0][0]])
        else:
            i = int(np.argmax(p))
    else:
        raise ValueError(f"unknown threshold target {target!r}; expected 'f1' or 'precision'")
    lower = t[i + 1] if i + 1 < t.size else max(float(t[i]) - 1e-3, 0.0)
    return float((t[i] + lower) / 2.0)


def classification_report(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Everything the comparison table needs for one category.

    Args:
        scores: ``[n]`` probabilities.
        labels: ``[n]`` 0/1.
        threshold: decision threshold.

    Returns:
        ``threshold, n, positives, precision, recall, f1, accuracy, ap, roc_auc, confusion_matrix``.
    """
    c = counts_at(scores, labels, threshold)
    y = np.asarray(labels).reshape(-1)
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        "positives": int(y.sum()),
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
        "accuracy": c.accuracy,
        "ap": average_precision(scores, labels),
        "roc_auc": roc_auc(scores, labels),
        "confusion_matrix": c.confusion_matrix(),
        **{k: v for k, v in asdict(c).items()},
    }


def multilabel_report(
    scores: np.ndarray, labels: np.ndarray, thresholds: Sequence[float], categories: Sequence[str]
) -> dict[str, Any]:
    """Per-category reports plus their macro average, and the "any danger" row for k > 1.

    Args:
        scores: ``[n, k]``.
        labels: ``[n, k]``.
        thresholds: ``[k]``.
        categories: ``[k]`` names.

    Returns:
        ``{"per_category": {cat: report}, "macro": {precision, recall, f1, ap, roc_auc}, "any": report?}``.
        ``any`` scores an image by its highest category score over that category's threshold (a ratio,
        thresholded at 1), i.e. exactly "is any category flagged".
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape != y.shape or s.shape[1] != len(categories) or len(thresholds) != len(categories):
        raise ValueError(
            f"scores {s.shape}, labels {y.shape}, {len(thresholds)} thresholds, {len(categories)} categories"
        )
    per = {c: classification_report(s[:, i], y[:, i], thresholds[i]) for i, c in enumerate(categories)}
    keys = ("precision", "recall", "f1", "ap", "roc_auc")
    macro = {k: float(np.nanmean([per[c][k] for c in categories])) if per else float("nan") for k in keys}
    out: dict[str, Any] = {"per_category": per, "macro": macro}
    if len(categories) > 1:
        flagged = (s >= np.asarray(thresholds)[None, :]).any(axis=1)
        y_any = y.any(axis=1).astype(np.int64)
        c = counts_at(flagged.astype(np.float64), y_any, 0.5)
        out["any"] = {
            "precision": c.precision,
            "recall": c.recall,
            "f1": c.f1,
            "confusion_matrix": c.confusion_matrix(),
        }
    return out


# --- localisation --------------------------------------------------------------------------------------


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A grid coverage mask ``[..., P]`` → bool: patches at least half covered.

    An object smaller than half of every patch it touches would vanish; it keeps its best-covered patch(es)
    instead, so every positive mask has at least one "on" patch.
    """
    m = np.asarray(mask, np.float64)
    on = m >= MASK_ON
    flat_on = on.reshape(-1, m.shape[-1])
    flat_m = m.reshape(-1, m.shape[-1])
    for i in np.nonzero(~flat_on.any(axis=1) & (flat_m.max(axis=1) > 0))[0]:
        flat_on[i] = flat_m[i] == flat_m[i].max()
    return flat_on.reshape(on.shape)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool arrays; 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def topk_iou(danger_map: np.ndarray, mask_on: np.ndarray) -> float:
    """Threshold-free IoU: the ``k`` highest-scoring patches against the ``k`` mask patches.

    Args:
        danger_map: ``[P]`` map values (any monotone scale: logits or probabilities).
        mask_on: ``[P]`` bool ground-truth patches, ``k = mask_on.sum() > 0``.
    """
    m = np.asarray(danger_map, np.float64).reshape(-1)
    t = np.asarray(mask_on, bool).reshape(-1)
    k = int(t.sum())
    if k == 0:
        raise ValueError("top-k IoU needs a non-empty mask")
    pred = np.zeros_like(t)
    pred[np.argsort(-m, kind="mergesort")[:k]] = True
    return iou(pred, t)


def pointing_hit(danger_map: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: does the map's peak patch touch the object (coverage > 0)?"""
    m = np.asarray(danger_map, np.float64).reshape(-1)
    return bool(np.asarray(mask, np.float64).reshape(-1)[int(np.argmax(m))] > 0)


def localisation_report(
    maps: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    mask_valid: np.ndarray,
    map_threshold: float,
) -> dict[str, Any]:
    """Map quality of one category on the images that are positive and have a mask.

    Args:
        maps: ``[n, P]`` per-patch probabilities.
        masks: ``[n, P]`` grid coverage in [0, 1].
        labels: ``[n]`` 0/1.
        mask_valid: ``[n]`` bool, the image has a mask for this category.
        map_threshold: probability above which a patch is called danger.

    Returns:
        ``n`` (images used), ``topk_iou``, ``pointing``, ``iou`` (at ``map_threshold``), ``iou@0.5``,
        ``peak_mean`` (mean of each map's highest value) and ``peak_above_threshold`` (fraction of maps
        whose peak reaches the threshold: is the thresholded map usable at all), on positives; and
        ``negative_area`` (mean fraction of patches over the threshold on negative images: false alarms).
        Values are NaN where no image qualifies.
    """
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks, np.float64)
    y = np.asarray(labels).reshape(-1).astype(bool)
    valid = np.asarray(mask_valid).reshape(-1).astype(bool)
    use = np.nonzero(y & valid & (masks.max(axis=1) > 0))[0]
    nan = float("nan")
    out: dict[str, Any] = {"n": int(use.size), "map_threshold": float(map_threshold)}
    if use.size:
        on = binarize_mask(masks[use])
        out["topk_iou"] = float(np.mean([topk_iou(maps[i], on[j]) for j, i in enumerate(use)]))
        out["pointing"] = float(np.mean([pointing_hit(maps[i], masks[i]) for i in use]))
        out["iou"] = float(np.mean([iou(maps[i] >= map_threshold, on[j]) for j, i in enumerate(use)]))
        out["iou@0.5"] = float(np.mean([iou(maps[i] >= 0.5, on[j]) for j, i in enumerate(use)]))
        peaks = maps[use].max(axis=1)
        out["peak_mean"] = float(peaks.mean())
        out["peak_above_threshold"] = float(np.mean(peaks >= map_threshold))
    else:
        out.update(topk_iou=nan, pointing=nan, iou=nan, **{"iou@0.5": nan}, peak_mean=nan, peak_above_threshold=nan)
    neg = np.nonzero(~y)[0]
    out["negative_area"] = float(np.mean(maps[neg] >= map_threshold)) if neg.size else nan
    return out


SIZE_BUCKETS = (("small", 0.0, 1 / 49), ("medium", 1 / 49, 9 / 49), ("large", 9 / 49, float("inf")))
"""Object size as the share of the image its mask covers: COCO's 32² and 96² pixel limits at 224 px."""


def by_object_size(
    scores: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    mask_valid: np.ndarray,
    threshold: float,
    map_threshold: float,
) -> dict[str, dict[str, Any]]:
    """Recall and map quality of one category's positives by object size (:data:`SIZE_BUCKETS`): whether the
    model finds small weapons, and whether its map points at them.

    Returns:
        ``{bucket: {"n", "recall", "topk_iou", "pointing", "iou"}}`` over positives with a mask (NaN: none).
    """
    masks = np.asarray(masks, np.float64)
    y = np.asarray(labels).reshape(-1).astype(bool)
    valid = np.asarray(mask_valid).reshape(-1).astype(bool)
    area = masks.mean(axis=1)
    hit = np.asarray(scores).reshape(-1) >= threshold
    out: dict[str, dict[str, Any]] = {}
    for name, lo, hi in SIZE_BUCKETS:
        rows = y & valid & (area > lo) & (area <= hi)
        loc = localisation_report(maps[rows], masks[rows], labels[rows], mask_valid[rows], map_threshold)
        out[name] = {
            "n": int(rows.sum()),
            "recall": float(hit[rows].mean()) if rows.any() else float("nan"),
            **{k: loc[k] for k in ("topk_iou", "pointing", "iou")},
        }
    return out


def choose_map_threshold(
    maps: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    mask_valid: np.ndarray,
    candidates: np.ndarray | None = None,
) -> float:
    """The map threshold with the best mean IoU on validation positives that have masks.

    Args:
        maps: ``[n, P]`` probabilities; masks ``[n, P]``; labels ``[n]``; mask_valid ``[n]``.
        candidates: thresholds to try. Default: 0.02 … 0.98 in steps of 0.02 plus 256 quantiles of the
            positives' map values (actual values, so each is an exact cut). The quantiles matter for
            uncalibrated maps, whose values can all sit far below 0.02.

    Returns:
        The best threshold (the highest among ties), or 0.5 when no image has a mask.
    """
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks, np.float64)
    use = np.asarray(labels).reshape(-1).astype(bool) & np.asarray(mask_valid).reshape(-1).astype(bool)
    use &= masks.max(axis=1) > 0
    if not use.any():
        return 0.5
    on = binarize_mask(masks[use])
    m = maps[use]
    if candidates is None:
        # Rounded so that a candidate is exactly the decimal it prints as (0.7, not 0.70000000001).
        grid = np.round(np.arange(1, 50) * 0.02, 2)
        cand = np.unique(np.r_[grid, np.quantile(m, np.linspace(0, 1, 257), method="nearest")])
    else:
        cand = np.asarray(candidates, np.float64)
    best_t, best = 0.5, -1.0
    for t in sorted(cand.tolist(), reverse=True):
        pred = m >= t
        inter = np.logical_and(pred, on).sum(axis=1)
        union = np.logical_or(pred, on).sum(axis=1)
        score = float(np.mean(inter / np.maximum(union, 1)))
        if score > best + 1e-12:
            best_t, best = float(t), score
    return best_t
