"""``dangerclip firearms``: write the fine-grained set, its retrieval split, and how confusable it is.

Output::

    images/<model>/<i>.jpg        every image, a folder per firearm model (the retrieval classes)
    types/<type>/<model>-<i>.jpg  the same images by type (pistol ... smg, toy, alarm, airsoft): hard links
    catalogue.json                the models' geometry
    retrieval.json                classes disjoint across train/val/test; per val/test class 2 queries,
                                  removed from the database (DeepFirearm's protocol)
    confusability.json            nearest-class-centroid accuracy of an untrained feature, per model and type
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.modeling.device import map_in_processes
from dangerclip.runtime.files import write_json
from training.firearms.catalogue import FirearmModel, make_catalogue
from training.firearms.draw import draw_image

log = logging.getLogger(__name__)


@dataclass
class FirearmsConfig:
    per_family: int = 10
    """Firearm models per family (six families: 60 models at 10)."""
    images_per_model: int = 24
    """Images drawn of each model."""
    size: int = 128
    """Image side in pixels."""
    spread: float = 0.18
    """How far models stray from their family's prototype (smaller: harder to tell apart)."""
    seed: int = 0
    """Seed of the catalogue, the images and the split."""
    val_fraction: float = 0.15
    """Share of the models (classes) held out for validation in the retrieval split."""
    test_fraction: float = 0.30
    """Share of the models held out for testing (DeepFirearm: 40 of 167 classes)."""


def type_of(m: FirearmModel) -> str:
    return m.tip or m.family


def _draw(job: tuple[FirearmModel, int, int, str]) -> str:
    m, i, size, path = job
    draw_image(m, i, size).save(path, quality=90)
    return path


def generate(out: str | Path, cfg: FirearmsConfig, workers: int = 1) -> dict[str, Any]:
    out = Path(out)
    models = make_catalogue(cfg.per_family, cfg.seed, cfg.spread)
    jobs = []
    for m in models:
        (out / "images" / m.name).mkdir(parents=True, exist_ok=True)
        (out / "types" / type_of(m)).mkdir(parents=True, exist_ok=True)
        jobs += [
            (m, cfg.seed * 100_000 + i, cfg.size, str(out / "images" / m.name / f"{i:03d}.jpg"))
            for i in range(cfg.images_per_model)
        ]
    map_in_processes(_draw, jobs, workers)
    for m, i, _, path in jobs:
        link = out / "types" / type_of(m) / f"{m.name}-{i % 100_000:03d}.jpg"
        if not link.exists():
            os.link(path, link)
    write_json(out / "catalogue.json", [m.to_dict() for m in models], indent=1)
    split = retrieval_split(models, cfg)
    write_json(out / "retrieval.json", split, indent=1)
    conf = confusability(out, models)
    write_json(out / "confusability.json", conf, indent=1)
    log.info("wrote %d images of %d models to %s; confusability %s", len(jobs), len(models), out, conf)
    return {"images": len(jobs), "models": len(models), "confusability": conf}


def retrieval_split(models: list[FirearmModel], cfg: FirearmsConfig) -> dict[str, Any]:
    """Classes (models) disjoint across splits, stratified by family; 2 queries per val/test class."""
    rng = random.Random(f"split:{cfg.seed}")
    by_family: dict[str, list[str]] = {}
    for m in models:
        by_family.setdefault(m.family, []).append(m.name)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for names in by_family.values():
        names = sorted(names)
        rng.shuffle(names)
        n_test = max(1, round(len(names) * cfg.test_fraction))
        n_val = max(1, round(len(names) * cfg.val_fraction))
        split["test"] += names[:n_test]
        split["val"] += names[n_test : n_test + n_val]
        split["train"] += names[n_test + n_val :]
    queries = {}
    for part in ("val", "test"):
        for c in split[part]:
            idx = list(range(cfg.images_per_model))
            rng.shuffle(idx)
            queries[c] = sorted(idx[:2])
    return {"classes": split, "queries": queries}


def _feature(path: Path) -> np.ndarray:
    """An untrained feature: a 16x16 grey thumbnail and a 4x4x4 colour histogram, standardised."""
    im = Image.open(path).convert("RGB")
    grey = np.asarray(im.convert("L").resize((16, 16)), np.float32).ravel() / 255
    hist = np.histogramdd(np.asarray(im.resize((32, 32))).reshape(-1, 3), bins=(4, 4, 4), range=[(0, 256)] * 3)[0]
    return np.concatenate([grey, hist.ravel() / hist.sum()])


def confusability(root: Path, models: list[FirearmModel]) -> dict[str, float]:
    """Nearest-class-centroid accuracy (half the images as centroids, half as queries) of the untrained feature:
    per model (60-way) and per type; with chance levels, so "hard but learnable" can be read off."""
    feats, labels, types = [], [], []
    for k, m in enumerate(models):
        for p in sorted((root / "images" / m.name).glob("*.jpg")):
            feats.append(_feature(p))
            labels.append(k)
            types.append(type_of(m))
    x = np.stack(feats)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.array(labels)
    idx = np.arange(len(y))
    fit, test = idx % 2 == 0, idx % 2 == 1
    cents = np.stack([x[fit & (y == k)].mean(0) for k in range(len(models))])
    pred = ((x[test][:, None, :] - cents[None]) ** 2).sum(-1).argmin(1)
    type_names = sorted(set(types))
    t = np.array([type_names.index(v) for v in types])
    tc = np.stack([x[fit & (t == k)].mean(0) for k in range(len(type_names))])
    tpred = ((x[test][:, None, :] - tc[None]) ** 2).sum(-1).argmin(1)
    return {
        "model_accuracy": round(float((pred == y[test]).mean()), 4),
        "model_chance": round(1 / len(models), 4),
        "type_accuracy": round(float((tpred == t[test]).mean()), 4),
        "type_chance": round(1 / len(type_names), 4),
    }
