"""The end of a head run: thresholds on val, metrics on test, map calibration, then the run's files.

Writes ``model.safetensors`` (thresholds and metrics in its card), ``eval.json``, ``model.onnx`` and
``report.md`` with its plots into the run folder.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.runtime.files import write_json
from training.config import TrainConfig
from training.history import read_history

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: the run folder.
        checkpoint: ``model.safetensors`` (None when the run stopped early with ``stop_after``).
        onnx: ``model.onnx`` when exported.
        report: ``report.md`` when written.
        steps: optimiser steps done.
        thresholds: per-category score thresholds chosen on val.
        map_thresholds: per-category map thresholds of the served maps (after calibration folding).
        metrics: ``{"val": evaluate(...), "test": evaluate(...)}`` (test absent without a test split).
        final_loss: mean training loss over the last logged window.
        seconds: wall time of this call.
        interrupted: the run stopped before ``iterations`` (``stop_after`` or a signal).
        model: the trained ``DangerCLIP`` (in memory).
    """

    out: Path
    checkpoint: Path | None
    onnx: Path | None
    report: Path | None
    steps: int
    thresholds: dict[str, float] = field(default_factory=dict)
    map_thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    final_loss: float = float("nan")
    seconds: float = 0.0
    interrupted: bool = False
    model: Any = None


def finish(cfg: TrainConfig, model: Any, data: dict[str, Any], result: TrainResult) -> None:
    """Thresholds on val, metrics on test, map calibration; then checkpoint, ``eval.json``, ONNX and report.

    Fills ``result``'s thresholds, metrics and file paths.
    """
    raw_map_thresholds, pred = _choose_and_measure(cfg, model, data["caches"], result)
    _write_outputs(cfg, model, result, raw_map_thresholds, pred, n_train=len(data["rows"]["train"]))


def _choose_and_measure(
    cfg: TrainConfig, model: Any, caches: dict[str, Any], result: TrainResult
) -> tuple[dict[str, float], Any]:
    """Choose thresholds on val, fold the map threshold into the head, measure val and test.

    Returns:
        The map thresholds on the head's own (uncalibrated) scale, and the predictions the report shows
        (test, else val).
    """
    from training import evaluate as E

    cats = cfg.categories
    val_cache = caches.get("val", caches["train"])
    vp = E.predict_features(model, val_cache)
    thresholds, map_thresholds = E.choose_thresholds(
        vp, cats, target=cfg.threshold_target, min_precision=cfg.min_precision
    )
    served = dict(map_thresholds)
    if cfg.calibrate_maps:
        served = calibrate_map_bias(model, map_thresholds)
        # The served maps changed: re-measure val with the folded bias (IoU@0.5 now is IoU at the threshold).
        vp = E.predict_features(model, val_cache)
    metrics: dict[str, Any] = {"val": E.evaluate(vp, cats, thresholds, served)}
    pred = vp
    if "test" in caches:
        pred = E.predict_features(model, caches["test"])
        metrics["test"] = E.evaluate(pred, cats, thresholds, served)
    result.thresholds, result.map_thresholds, result.metrics = thresholds, served, metrics
    return map_thresholds, pred


def _write_outputs(
    cfg: TrainConfig, model: Any, result: TrainResult, raw_map_thresholds: dict[str, float], pred: Any, n_train: int
) -> None:
    from dangerclip.modeling.checkpoint import save_checkpoint
    from training.evaluate import card_metrics

    out, metrics = result.out, result.metrics
    card_m = card_metrics(metrics["val"], metrics.get("test"), result.map_thresholds, "test")
    # The thresholds on the head's own (uncalibrated) map scale, before folding: how far off 0.5 it was.
    card_m["map_thresholds_raw"] = dict(raw_map_thresholds)
    card_m.update(
        {
            "iterations": result.steps,
            "dense": cfg.dense,
            "batch_size": cfg.batch_size,
            "data": str(cfg.data),
            "threshold_target": cfg.threshold_target,
        }
    )
    notes = (
        f"Head trained {result.steps} steps ({'BCE + focal + dice' if cfg.dense else 'BCE only'}) on "
        f"{n_train} images; thresholds chosen on val ({cfg.threshold_target})."
    )
    ckpt = out / "model.safetensors"
    save_checkpoint(
        model, ckpt, version=cfg.version, thresholds=result.thresholds, metrics=card_m, trained=True, notes=notes
    )
    result.checkpoint = ckpt
    write_json(
        out / "eval.json",
        {"thresholds": result.thresholds, "map_thresholds": result.map_thresholds, "metrics": metrics},
    )
    split = "test" if "test" in metrics else "val"
    log.info("wrote %s; %s F1 %.3f AP %.3f", ckpt, split, metrics[split]["macro"]["f1"], metrics[split]["macro"]["ap"])
    if cfg.export:
        from dangerclip.modeling.export import export_onnx

        model.cpu()
        result.onnx = export_onnx(model, out / "model.onnx")
    if cfg.report:
        from training.report import write_report

        result.report = write_report(out, cfg, metrics, read_history(out / "metrics.jsonl"), pred, model.card)


def calibrate_map_bias(model: Any, map_thresholds: dict[str, float]) -> dict[str, float]:
    """Fold the IoU-best map threshold into the head's map bias, so served maps cross 0.5 where it was.

    ``sigmoid(s·a + b) >= t`` is ``sigmoid(s·a + b - logit(t)) >= 0.5``. The bias is shared by all
    categories, so with several categories the mean shift is folded and each category's threshold moves
    accordingly.

    Returns:
        The map thresholds that apply to the served (calibrated) maps: 0.5 for a single category.
    """
    head = model.head
    if not hasattr(head, "map_bias") or not map_thresholds:
        return dict(map_thresholds)

    def logit(p: float) -> float:
        p = min(max(p, 1e-4), 1 - 1e-4)
        return math.log(p / (1 - p))

    shift = float(np.mean([logit(t) for t in map_thresholds.values()]))
    with torch.no_grad():
        head.map_bias.sub_(shift)
    log.info("map calibration: bias shifted by %.3f (val IoU-best thresholds %s)", -shift, map_thresholds)
    return {c: 1.0 / (1.0 + math.exp(-(logit(t) - shift))) for c, t in map_thresholds.items()}
