"""The stages that make the demo model: the head's data, the backbone, the head runs; each cached.

``stage_synth`` draws the head's set; ``stage_pretrain`` loads (or pre-trains) the backbone and probes its
patch tokens; ``stage_train`` trains the head with or without the dense losses on the frozen backbone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from training.demo_model.config import DemoConfig
from training.demo_model.stage_cache import cached, key_of, record

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def model_config(name: str) -> dict[str, Any]:
    """The DangerCLIP model config (its contents key the stages, so editing the file redoes them)."""
    from dangerclip.modeling.factory import get_config

    return get_config(name)


def stage_synth(cfg: DemoConfig, force: bool = False) -> dict[str, Path]:
    """Generate (or reuse) the head's set. The pre-training set is drawn in memory by ``stage_pretrain``."""
    from training.synth import SynthConfig, generate

    folder = Path(cfg.work) / "data" / "head"
    sc = SynthConfig(n=cfg.n_head, seed=cfg.head_seed, categories=list(cfg.categories))
    key = {"synth": asdict(sc)}
    if force or cached(folder, key, ["manifest.jsonl"]) is None:
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.perf_counter()
        generate(folder, sc, workers=cfg.workers)
        record(folder, key, {"seconds": round(time.perf_counter() - t0, 1)})
    else:
        log.info("synth: reusing %s", folder)
    return {"head": folder / "manifest.jsonl"}


def stage_pretrain(cfg: DemoConfig, data: dict[str, Path], force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Load the given pre-trained backbone, or pre-train one; returns its weights file and the stage record.

    Either way the linear probe runs on the head set's held-out images, for a randomly initialised backbone
    of the same config and for the pre-trained one.
    """
    from training import pretrain as pt

    folder = Path(cfg.work) / "backbone"
    key = _pretrain_key(cfg, data)
    weights = folder / "clip.safetensors"
    rec = None if force else cached(folder, key, ["clip.safetensors"])
    if rec is not None:
        log.info("pretrain: reusing %s", weights)
        return weights, rec
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    if cfg.probe_images:
        before = pt.build_clip(cfg.model, seed=cfg.pretrain.seed)
        info["probe_before"] = _probe(before, data["head"], cfg.probe_images)
        log.info("probe before pre-training: AUROC %.3f", info["probe_before"]["auroc"])
    clip = _load_backbone(cfg, info) if cfg.backbone else _pretrain_backbone(cfg, info)
    if cfg.probe_images:
        info["probe_after"] = _probe(clip, data["head"], cfg.probe_images)
        log.info("probe after pre-training: AUROC %.3f", info["probe_after"]["auroc"])
    pt.save_clip(clip, weights, metadata={"dangerclip.pretrain": json.dumps(info)})
    return weights, record(folder, key, info)


def _pretrain_key(cfg: DemoConfig, data: dict[str, Path]) -> dict[str, Any]:
    probe_key = [key_of(data["head"].parent), cfg.probe_images]
    if cfg.backbone:
        src = Path(cfg.backbone)
        if not src.is_file():
            raise FileNotFoundError(f"pre-trained backbone not found: {src} (--backbone none pre-trains one)")
        return {"model": cfg.model, "backbone": hashlib.sha256(src.read_bytes()).hexdigest(), "probe": probe_key}
    return {
        "model": cfg.model,
        "model_config": model_config(cfg.model)["clip"],
        "pretrain": asdict(cfg.pretrain),
        "data": [cfg.n_pretrain, cfg.pretrain_seed, list(cfg.categories), cfg.pretrain_grayscale],
        "probe": probe_key,
    }


def _load_backbone(cfg: DemoConfig, info: dict[str, Any]) -> nn.Module:
    """The given weights, with how they were made (from their metadata) added to ``info``."""
    from safetensors import safe_open

    from training import pretrain as pt

    src = Path(cfg.backbone)
    clip = pt.load_clip(src, cfg.model)
    with safe_open(str(src), "pt") as f:
        made = json.loads((f.metadata() or {}).get("dangerclip.pretrain", "{}"))
    info.update({k: made.get(k) for k in ("train", "heldout", "recipe") if k in made})
    info["source"] = _display_path(src)
    log.info("pretrain: loaded %s (%s)", src, json.dumps(made.get("recipe", {})))
    return clip


def _pretrain_backbone(cfg: DemoConfig, info: dict[str, Any]) -> nn.Module:
    """Pre-train a CLIP of ``cfg.model`` on ``n_pretrain`` images drawn in memory; the recipe goes into ``info``."""
    from training import pretrain as pt

    size = int(model_config(cfg.model)["clip"]["vision_cfg"]["image_size"])
    clip = pt.build_clip(cfg.model, seed=cfg.pretrain.seed)
    drawn = {"size": size, "categories": cfg.categories, "grayscale": cfg.pretrain_grayscale}
    train_data = pt.synthetic_caption_data(cfg.n_pretrain, cfg.pretrain_seed, workers=cfg.workers, **drawn)
    info["train"] = pt.pretrain(clip, train_data, cfg.pretrain).summary()
    del train_data
    held = pt.synthetic_caption_data(min(1024, cfg.n_pretrain), cfg.pretrain_seed + 1, **drawn)
    info["heldout"] = pt.contrastive_eval(clip, held)
    info["recipe"] = {
        "model": cfg.model,
        "data": {
            "n": cfg.n_pretrain,
            "seed": cfg.pretrain_seed,
            "categories": list(cfg.categories),
            "grayscale": cfg.pretrain_grayscale,
        },
        "pretrain": asdict(cfg.pretrain),
    }
    return clip


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (reports must not name this machine)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _probe(clip: nn.Module, manifest: Path, limit: int) -> dict[str, Any]:
    """Linear probe on the head set's val/test images, for the set's first category."""
    from training import pretrain as pt

    with open(manifest, encoding="utf-8") as f:
        category = next(iter(json.loads(f.readline())["labels"]))
    feats, cover, _ = pt.patch_features(clip, manifest, category=category, limit=limit, splits=("val", "test"))
    return pt.linear_probe(feats, cover)


def stage_train(
    cfg: DemoConfig, data: dict[str, Path], weights: Path, dense: bool, force: bool = False
) -> dict[str, Any]:
    """Train (or reuse) the head with or without the dense losses; returns the stage record."""
    from training.train import train

    name = "dense" if dense else "no-dense"
    folder = Path(cfg.work) / "runs" / name
    tc = dataclasses.replace(
        cfg.head,
        data=str(data["head"]),
        categories=list(cfg.categories),
        model=cfg.model,
        pretrained=str(weights),
        out=str(folder),
        cache_dir=str(Path(cfg.work) / "cache"),
        dense=dense,
        report=dense,
    )
    key = {
        "train": tc.to_dict(),
        # The config's contents, not just its name: editing model_configs/<name>.json must retrain.
        "model_config": model_config(cfg.model),
        "data": key_of(data["head"].parent),
        "backbone": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    rec = None if force else cached(folder, key, ["model.safetensors", "eval.json"])
    if rec is not None:
        log.info("train (%s): reusing %s", name, folder)
        return rec
    if folder.exists():
        shutil.rmtree(folder)
    res = train(tc)
    if res.checkpoint is None:
        raise RuntimeError(f"head training ({name}) stopped before the end")
    return record(
        folder,
        key,
        {
            "checkpoint": str(res.checkpoint),
            "seconds": round(res.seconds, 1),
            "steps": res.steps,
            "final_loss": res.final_loss,
            "thresholds": res.thresholds,
            "map_thresholds": res.map_thresholds,
        },
    )
