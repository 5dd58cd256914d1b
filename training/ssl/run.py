"""One type-classification run: splits → pre-training → linear probe → fine-tuning → calibration → report and
the exported type head."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.modeling.device import resolve_device, seed_everything, torch_threads
from dangerclip.modeling.typenet import TypeClassifier, build_backbone, export_type_head
from dangerclip.runtime.files import write_json
from dangerclip.runtime.typehead import TypeCard
from training.ssl import downstream as ds
from training.ssl.config import TypeConfig
from training.ssl.data import Splits, keep_labels, read_splits, unlabelled
from training.ssl.pretrain import pretrain

log = logging.getLogger(__name__)


def look_alike_classes(classes: list[str], words: str) -> list[str]:
    """The classes whose name contains one of the comma-separated ``words`` (case-insensitive)."""
    keys = [w.strip().lower() for w in words.split(",") if w.strip()]
    return [c for c in classes if any(k in c.lower() for k in keys)]


def run(cfg: TypeConfig, splits: Splits | None = None) -> dict[str, Any]:
    """Run ``cfg`` end to end into ``cfg.out``; returns the figures (also written to ``metrics.json``)."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits, unlabelled_train = keep_labels(
        splits or read_splits(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed), cfg.label_fraction
    )
    extra = unlabelled_train + (unlabelled(cfg.unlabelled) if cfg.unlabelled else [])
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    with torch_threads(cfg.threads):
        backbone, spec = build_backbone(cfg.backbone)
        size = cfg.image_size or spec.image_size
        backbone.to(device)
        history = pretrain(cfg, backbone, spec, splits.train, splits.val, len(splits.classes), extra, size, device, out)
        figures = downstream(cfg, backbone, spec.feature_dim, splits, size, device, out)
    figures.update(
        {
            "config": cfg.to_dict(),
            "splits": splits.counts(),
            # the history's clock runs across resumes: the run's whole pre-training time
            "pretrain": {"seconds": round(history.get("seconds", 0.0), 1), "history": history},
        }
    )
    write_json(out / "metrics.json", figures, indent=1)
    return figures


def downstream(
    cfg: TypeConfig,
    backbone: torch.nn.Module,
    feature_dim: int,
    splits: Splits,
    size: int,
    device: torch.device,
    out: Path,
) -> dict[str, Any]:
    """Probe, fine-tune, calibrate, report and export; the figures of each protocol on val and test."""
    yva = np.array([i.label for i in splits.val])
    yte = np.array([i.label for i in splits.test])
    t0 = time.perf_counter()
    clf, probe_info = ds.linear_probe(backbone, splits.train, splits.val, size, device)
    probe = ds.probe_classifier(backbone, clf, feature_dim, len(splits.classes))
    result: dict[str, Any] = {
        "probe": {
            **probe_info,
            "test": ds.report(ds.logits(probe, splits.test, size, device), yte, splits.classes),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    }
    served = probe
    if cfg.finetune_epochs:
        t0 = time.perf_counter()
        # A copy of the pre-trained backbone (normalised features, as the probe saw them) with the probe's head to
        # start: the probe keeps its own, in case val prefers it.
        model = TypeClassifier(copy.deepcopy(probe.backbone), feature_dim, len(splits.classes))
        model.head.load_state_dict(probe.head.state_dict())
        info = ds.finetune(
            model, splits.train, splits.val, size, device, cfg.finetune_epochs, cfg.finetune_lr, cfg.seed
        )
        result["finetune"] = {
            **info,
            "test": ds.report(ds.logits(model, splits.test, size, device), yte, splits.classes),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        # The protocol to serve is chosen on val, never on test: fine-tuning can overfit a small set. A tie goes to
        # the probe: the fine-tuning's val figure is the best of its epochs, so it is the more flattered of the two.
        if info["best_val_accuracy"] > max(probe_info["val_accuracy_by_C"].values()):
            served = model
    lg_val = ds.logits(served, splits.val, size, device)
    t = ds.fit_temperature(lg_val, yva)
    p_val = ds.softmax(lg_val, t)
    cuts = ds.confidence_cuts(p_val, yva)
    lg_test = ds.logits(served, splits.test, size, device)
    served_report = ds.report(lg_test, yte, splits.classes, temperature=t)
    result["served"] = {
        "protocol": "finetune" if served is not probe else "probe",
        "temperature": t,
        "confidence": cuts,
        "ece_before": ds.ece(ds.softmax(lg_test), yte),
        "ece_after": served_report["ece"],
        "test_accuracy": served_report["accuracy"],
    }
    ds.plot_confusion(
        served_report["confusion"],
        splits.classes,
        out / "confusion.png",
        f"{cfg.backbone} / {cfg.method}: test accuracy {served_report['accuracy']:.3f}",
    )
    ds.plot_reliability(ds.softmax(lg_test), ds.softmax(lg_test, t), yte, out / "reliability.png")
    if cfg.export:
        card = TypeCard(
            name=f"types-{cfg.backbone}-{cfg.method}",
            version=cfg.version,
            classes=list(splits.classes),
            look_alike=look_alike_classes(splits.classes, cfg.look_alike),
            image_size=size,
            temperature=t,
            confidence=cuts,
            backbone=f"{cfg.backbone}/{cfg.method}",
            metrics={"test_accuracy": served_report["accuracy"], "ece": served_report["ece"]},
            notes="trained by dangerclip types train",
        )
        export_type_head(served.cpu().eval(), card, out / "type_head.onnx")
        served.to(device)
        result["served"]["model"] = str(out / "type_head.onnx")
    return result
