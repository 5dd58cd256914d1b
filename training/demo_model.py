"""Build the offline demo model end to end (``dangerclip demo-model``).

One command, cached stage by stage under ``--work`` (a stage is redone only when its options change):

1. ``synth``: the head's synthetic set (labels, exact masks, train/val/test splits), drawn in ``--workers``
   processes.
2. ``pretrain``: the backbone, a small hybrid CLIP (``demo`` config: convolutional stem + 4-layer ViT),
   pre-trained contrastively on synthetic captions (``training.pretrain``) from a disjoint, in-memory set.
   By default this stage *loads* the committed result, ``training/assets/demo_backbone.safetensors``, as a
   user loads CLIP weights: the recipe needs 1.28 million image views (5 000 steps of 256 images drawn from
   100 000), which took 6 minutes on one H100 and would take about 16 hours on 2 CPU cores. ``--backbone
   none`` redoes it (``--pretrain-device auto`` uses a GPU when there is one). A linear probe on the patch
   tokens (weapon patches vs the rest, AUROC on held-out images) is measured for the random and the
   pre-trained backbone.
3. ``train``: the paper's head on the frozen backbone (``training.train``: BCE + 2·focal + dice, threshold
   chosen on val, map calibration), and the no-dense ablation (BCE only) on the same features.
4. ``export``: the dense model, with its vision tower inside the checkpoint so that nothing else is needed,
   as ONNX and safetensors into ``--assets`` (default ``dangerclip/assets/demo``), plus ``report.json`` and
   ``report.md`` with the figures (F1, AP, localisation with and without the dense losses, probe AUROC).

The demo model is trained and evaluated on synthetic images only; its figures say that the pipeline works
end to end on data whose masks are exact. They are not a claim about real images.

``--ci`` is the same pipeline at toy sizes (pre-training included; well under a minute) for the tests; its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.commandline import exits_2_on_bad_input
from training.files import atomic_write_text, write_json
from training.report import summary_row

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dangerclip" / "assets" / "demo"
"""Where the committed demo model lives (``dangerclip/assets/demo``)."""

DEMO_BACKBONE = Path(__file__).resolve().parent / "assets" / "demo_backbone.safetensors"
"""The committed pre-trained ``demo`` CLIP (vision tower fp32, text tower fp16; how it was made is in its
metadata under ``dangerclip.pretrain``)."""


@dataclass
class DemoConfig:
    """Everything that decides the demo model. Stage caches are keyed on the fields each stage reads.

    Attributes:
        work: working folder (data, backbone, runs); reused between invocations.
        assets: where ``model.onnx``, ``model.safetensors`` and the reports are written.
        categories: the model's prompts (``weapon``, or e.g. ``gun,knife``).
        model: DangerCLIP model config of the backbone and head (``demo``; ``tiny`` works too).
        backbone: pre-trained CLIP weights to load (default: the committed ``DEMO_BACKBONE``); empty to
            pre-train here with the options below.
        n_head: images in the head's synthetic set (split 80/10/10 into train/val/test).
        n_pretrain: images in the disjoint pre-training set (drawn in memory).
        head_seed: seed of the head's set.
        pretrain_seed: seed of the pre-training set (must differ from ``head_seed``); its held-out images
            use ``pretrain_seed + 1``.
        pretrain_steps: contrastive pre-training steps.
        pretrain_decay_steps: horizon of the cosine decay (0: ``pretrain_steps``, as for the committed
            backbone; a longer horizon keeps the rate near its peak).
        pretrain_batch: images per pre-training step.
        pretrain_lr: peak pre-training learning rate.
        pretrain_warmup: linear warm-up steps.
        mask_ratio: FLIP token masking during pre-training.
        pretrain_grayscale: share of the pre-training images turned grey, captions without colour words.
        tag_weight: weight of the word-grounding term of pre-training.
        global_words: pre-training also matches caption words against the global embedding.
        pretrain_device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``.
        iterations: head training steps (the paper: 2000).
        batch_size: head batch size (the paper: 32).
        head_lr: head learning rate.
        color_views: colour-jittered views per orientation in the head's feature cache (each view costs a
            backbone pass on the CPU).
        grayscale: probability that a colour-jittered view is turned grey. Without grey views (here or in
            pre-training) the head relied on colour: recall on greyscale copies of the test images was 0.36.
        ablation: also train the no-dense ablation (needed for the localisation comparison).
        probe_images: held-out images for the patch-token linear probe (0 skips it).
        workers: processes drawing synthetic images.
        threads: torch threads for the whole build (0: torch's default).
        version: model version written into the card.
        seed: seeds model initialisation and training.
    """

    work: str = "runs/demo-model"
    assets: str = str(ASSETS_DIR)
    categories: list[str] = dataclasses.field(default_factory=lambda: ["weapon"])
    model: str = "demo"
    backbone: str = str(DEMO_BACKBONE)
    n_head: int = 6000
    n_pretrain: int = 100000
    head_seed: int = 1000
    pretrain_seed: int = 2000
    pretrain_steps: int = 5000
    pretrain_decay_steps: int = 0
    pretrain_batch: int = 256
    pretrain_lr: float = 1e-3
    pretrain_warmup: int = 300
    mask_ratio: float = 0.25
    pretrain_grayscale: float = 0.2
    tag_weight: float = 1.0
    global_words: bool = False
    pretrain_device: str = "auto"
    iterations: int = 2000
    batch_size: int = 32
    head_lr: float = 5e-4
    color_views: int = 1
    grayscale: float = 0.5
    ablation: bool = True
    probe_images: int = 200
    workers: int = 2
    threads: int = 2
    version: str = "2.0.0-demo"
    seed: int = 0

    @classmethod
    def ci(cls, work: str, assets: str) -> DemoConfig:
        """Toy sizes for tests: the whole pipeline, pre-training included, in well under a minute."""
        return cls(
            work=work,
            assets=assets,
            backbone="",
            n_head=60,
            n_pretrain=48,
            pretrain_steps=3,
            pretrain_decay_steps=0,
            pretrain_batch=16,
            pretrain_warmup=1,
            iterations=8,
            batch_size=8,
            color_views=0,
            ablation=True,
            probe_images=12,
            workers=1,
            version="0.0.0-ci",
        )

    def validate(self) -> None:
        from training.synth import CATEGORY_KINDS

        bad = [c for c in self.categories if c not in CATEGORY_KINDS]
        if bad:
            raise ValueError(f"unknown categories {bad}; choose from {sorted(CATEGORY_KINDS)}")
        if self.head_seed == self.pretrain_seed:
            raise ValueError(
                "head_seed and pretrain_seed must differ: pre-training must not see the head's images"
            )
        if min(self.n_head, self.n_pretrain, self.pretrain_steps, self.iterations) < 1:
            raise ValueError("n_head, n_pretrain, pretrain_steps and iterations must be >= 1")
        if not (0.0 <= self.pretrain_grayscale <= 1.0 and 0.0 <= self.grayscale <= 1.0):
            raise ValueError("pretrain_grayscale and grayscale must be probabilities in [0, 1]")


# ----------------------------------------------------------------------------------------------------
# Stage cache


def _key(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _cached(folder: Path, key: dict[str, Any], outputs: list[str]) -> dict[str, Any] | None:
    """The saved record of a stage if it ran with the same key and its outputs are still there."""
    rec = folder / "stage.json"
    if not rec.is_file():
        return None
    saved = json.loads(rec.read_text())
    if saved.get("key") != _key(key) or not all((folder / o).exists() for o in outputs):
        return None
    return saved


def _record(folder: Path, key: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    rec = {"key": _key(key), "inputs": key, **info}
    write_json(folder / "stage.json", rec)
    return rec


# ----------------------------------------------------------------------------------------------------
# Stages


def stage_synth(cfg: DemoConfig, force: bool = False) -> dict[str, Path]:
    """Generate (or reuse) the head's set. The pre-training set is drawn in memory by ``stage_pretrain``."""
    from training.synth import SynthConfig, generate

    folder = Path(cfg.work) / "data" / "head"
    sc = SynthConfig(n=cfg.n_head, seed=cfg.head_seed, categories=list(cfg.categories))
    key = {"synth": asdict(sc)}
    if force or _cached(folder, key, ["manifest.jsonl"]) is None:
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.perf_counter()
        generate(folder, sc, workers=cfg.workers)
        _record(folder, key, {"seconds": round(time.perf_counter() - t0, 1)})
    else:
        log.info("synth: reusing %s", folder)
    return {"head": folder / "manifest.jsonl"}


def pretrain_config(cfg: DemoConfig) -> Any:
    """The ``training.pretrain.PretrainConfig`` of the demo recipe."""
    from training import pretrain as pt

    return pt.PretrainConfig(
        steps=cfg.pretrain_steps,
        decay_steps=cfg.pretrain_decay_steps,
        batch_size=cfg.pretrain_batch,
        lr=cfg.pretrain_lr,
        warmup=cfg.pretrain_warmup,
        mask_ratio=cfg.mask_ratio,
        tag_weight=cfg.tag_weight,
        global_words=cfg.global_words,
        seed=cfg.seed,
        device=cfg.pretrain_device,
        log_every=100,
    )


def stage_pretrain(
    cfg: DemoConfig, data: dict[str, Path], force: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Load the given pre-trained backbone, or pre-train one; returns its weights file and the stage record.

    Either way the linear probe runs on the head set's held-out images, for a randomly initialised backbone
    of the same config and for the pre-trained one.
    """
    from safetensors import safe_open

    from training import pretrain as pt

    folder = Path(cfg.work) / "backbone"
    probe_key = [_stage_key_of(data["head"].parent), cfg.probe_images]
    if cfg.backbone:
        src = Path(cfg.backbone)
        if not src.is_file():
            raise FileNotFoundError(f"pre-trained backbone not found: {src} (--backbone none pre-trains one)")
        key: dict[str, Any] = {
            "model": cfg.model,
            "backbone": hashlib.sha256(src.read_bytes()).hexdigest(),
            "probe": probe_key,
        }
    else:
        key = {
            "model": cfg.model,
            "model_config": _model_config(cfg.model)["clip"],
            "pretrain": asdict(pretrain_config(cfg)),
            "data": [cfg.n_pretrain, cfg.pretrain_seed, list(cfg.categories), cfg.pretrain_grayscale],
            "probe": probe_key,
        }
    weights = folder / "clip.safetensors"
    rec = None if force else _cached(folder, key, ["clip.safetensors"])
    if rec is not None:
        log.info("pretrain: reusing %s", weights)
        return weights, rec
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    if cfg.probe_images:
        info["probe_before"] = _probe(pt, pt.build_clip(cfg.model, seed=cfg.seed), data["head"], cfg.probe_images)
        log.info("probe before pre-training: AUROC %.3f", info["probe_before"]["auroc"])
    if cfg.backbone:
        clip = pt.load_clip(cfg.backbone, cfg.model)
        with safe_open(cfg.backbone, "pt") as f:
            made = json.loads((f.metadata() or {}).get("dangerclip.pretrain", "{}"))
        info.update({k: made.get(k) for k in ("train", "heldout", "recipe") if k in made})
        info["source"] = _display_path(src)
        log.info("pretrain: loaded %s (%s)", src, json.dumps(made.get("recipe", {})))
    else:
        size = int(_model_config(cfg.model)["clip"]["vision_cfg"]["image_size"])
        clip = pt.build_clip(cfg.model, seed=cfg.seed)
        train_data = pt.synthetic_caption_data(
            cfg.n_pretrain,
            cfg.pretrain_seed,
            size=size,
            categories=cfg.categories,
            workers=cfg.workers,
            grayscale=cfg.pretrain_grayscale,
        )
        res = pt.pretrain(clip, train_data, pretrain_config(cfg))
        del train_data
        info["train"] = res.summary()
        held = pt.synthetic_caption_data(
            min(1024, cfg.n_pretrain),
            cfg.pretrain_seed + 1,
            size=size,
            categories=cfg.categories,
            grayscale=cfg.pretrain_grayscale,
        )
        info["heldout"] = pt.contrastive_eval(clip, held)
        info["recipe"] = {
            "model": cfg.model,
            "data": {
                "n": cfg.n_pretrain,
                "seed": cfg.pretrain_seed,
                "categories": list(cfg.categories),
                "grayscale": cfg.pretrain_grayscale,
            },
            "pretrain": asdict(pretrain_config(cfg)),
        }
    if cfg.probe_images:
        info["probe_after"] = _probe(pt, clip, data["head"], cfg.probe_images)
        log.info("probe after pre-training: AUROC %.3f", info["probe_after"]["auroc"])
    pt.save_clip(clip, weights, metadata={"dangerclip.pretrain": json.dumps(info)})
    return weights, _record(folder, key, info)


def _model_config(name: str) -> dict[str, Any]:
    from dangerclip.factory import get_config

    return get_config(name)


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (reports must not name this machine)."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _probe(pt: Any, clip: torch.nn.Module, manifest: Path, limit: int) -> dict[str, Any]:
    """Linear probe on the head set's val/test images, per category; ``auroc`` is the first category's."""
    cats = _categories_of(manifest)
    feats, cover, _ = pt.patch_features(clip, manifest, category=cats[0], limit=limit, splits=("val", "test"))
    return pt.linear_probe(feats, cover)


def _categories_of(manifest: Path) -> list[str]:
    with open(manifest, encoding="utf-8") as f:
        return list(json.loads(f.readline())["labels"])


def _stage_key_of(folder: Path) -> str:
    rec = json.loads((folder / "stage.json").read_text())
    return str(rec["key"])


def stage_train(
    cfg: DemoConfig, data: dict[str, Path], weights: Path, dense: bool, force: bool = False
) -> dict[str, Any]:
    """Train (or reuse) the head with or without the dense losses; returns the stage record."""
    from training.config import TrainConfig
    from training.train import train

    name = "dense" if dense else "no-dense"
    folder = Path(cfg.work) / "runs" / name
    tc = TrainConfig(
        data=str(data["head"]),
        categories=list(cfg.categories),
        model=cfg.model,
        pretrained=str(weights),
        out=str(folder),
        cache_dir=str(Path(cfg.work) / "cache"),
        batch_size=cfg.batch_size,
        iterations=cfg.iterations,
        lr=cfg.head_lr,
        warmup=max(1, min(100, cfg.iterations // 20)),
        seed=cfg.seed,
        dense=dense,
        color_views=cfg.color_views,
        grayscale=cfg.grayscale,
        threads=cfg.threads,
        checkpoint_every=0,
        eval_every=0,
        export=False,
        report=dense,
        progress=False,
        version=cfg.version,
    )
    key = {
        "train": tc.to_dict(),
        # The config's contents, not just its name: editing model_configs/<name>.json must retrain.
        "model_config": _model_config(cfg.model),
        "data": _stage_key_of(data["head"].parent),
        "backbone": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    rec = None if force else _cached(folder, key, ["model.safetensors", "eval.json"])
    if rec is not None:
        log.info("train (%s): reusing %s", name, folder)
        return rec
    if folder.exists():
        shutil.rmtree(folder)
    res = train(tc)
    if res.checkpoint is None:
        raise RuntimeError(f"head training ({name}) stopped before the end")
    return _record(
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


def _brief(eval_json: Path, split: str) -> dict[str, Any]:
    """The headline figures of one run's split (macro over categories; P/R/F1 of the only one when k = 1)."""
    ev = json.loads(eval_json.read_text())
    rep = ev["metrics"].get(split) or ev["metrics"]["val"]
    row = summary_row(split, rep)
    row.pop("model", None)
    row["iou@threshold"] = row.pop("iou", None)
    row["n"] = rep.get("n")
    return row


def stage_export(
    cfg: DemoConfig, weights: Path, pre: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> Path:
    """Write the dense model (checkpoint with its vision tower, ONNX) and the reports into ``cfg.assets``."""
    from dangerclip.card import BackboneIdentity
    from dangerclip.checkpoint import load_checkpoint, save_checkpoint
    from dangerclip.export import export_onnx

    assets = Path(cfg.assets)
    assets.mkdir(parents=True, exist_ok=True)
    dense_ckpt = Path(runs["dense"]["checkpoint"])
    model = load_checkpoint(dense_ckpt, pretrained=str(weights))
    # The card must not point at this machine's work folder: the backbone travels inside the checkpoint.
    model.card.backbone = BackboneIdentity(
        model=model.card.backbone.model,
        pretrained=f"synthetic-contrastive:{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}",
        sha256=model.card.backbone.sha256,
    )
    model.card.notes = (
        f"DangerCLIP offline demo model: small CLIP ({cfg.model} config) pre-trained contrastively on synthetic "
        "captions, head trained on synthetic weapon/distractor images (training.demo_model). "
        "Not for real images."
    )
    ckpt = assets / "model.safetensors"
    save_checkpoint(model, ckpt, include_backbone=True)
    onnx_path = export_onnx(model, assets / "model.onnx")

    split = "test"
    report: dict[str, Any] = {
        "command": " ".join(["dangerclip demo-model", *(shlex.quote(a) for a in sys.argv[2:])])
        if len(sys.argv) > 1 and sys.argv[1] == "demo-model"
        else "dangerclip demo-model",
        "config": asdict(cfg),
        "pretrain": {
            k: pre.get(k) for k in ("train", "heldout", "probe_before", "probe_after", "recipe", "source")
        },
        "dense": _brief(Path(runs["dense"]["checkpoint"]).parent / "eval.json", split),
        "thresholds": runs["dense"].get("thresholds"),
        "map_thresholds": runs["dense"].get("map_thresholds"),
        "files": {
            p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in (ckpt, onnx_path)
        },
        "seconds": {k: v.get("seconds") for k, v in runs.items()},
        "note": "synthetic held-out split; not a claim about real images",
    }
    if "no-dense" in runs:
        report["no_dense"] = _brief(Path(runs["no-dense"]["checkpoint"]).parent / "eval.json", split)
    write_json(assets / "report.json", report)
    atomic_write_text(assets / "report.md", _markdown(report))
    log.info("demo model written to %s", assets)
    return onnx_path


def _fmt(x: Any) -> str:
    return "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _markdown(rep: dict[str, Any]) -> str:
    cols = ("precision", "recall", "f1", "ap", "roc_auc", "topk_iou", "pointing", "iou@threshold")
    lines = [
        "# DangerCLIP offline demo model",
        "",
        "Built by `"
        + rep["command"]
        + "` (`training/demo_model.py`). Synthetic data only: these figures show",
        "that the pipeline works on images whose masks are exact; they are not a claim about real images.",
        "",
        f"## Held-out synthetic test split (n = {rep['dense'].get('n')})",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, key in (
        ("dense losses (BCE + 2·focal + dice)", "dense"),
        ("no-dense ablation (BCE)", "no_dense"),
    ):
        if key in rep:
            lines.append(f"| {name} | " + " | ".join(_fmt(rep[key].get(c)) for c in cols) + " |")
    pre = rep["pretrain"]
    lines += [
        "",
        "Localisation: `topk_iou` (threshold-free: IoU of the top-|mask| patches with the mask), `pointing`",
        "(the map's maximum lies on the object), `iou@threshold` (IoU of the calibrated map at its threshold).",
        "",
        f"## Backbone: contrastive pre-training of the `{rep['config'].get('model')}` CLIP on synthetic captions",
        "",
        f"Weights: {'`' + str(pre['source']) + '`' if pre.get('source') else 'pre-trained by this command'}.",
        f"Recipe: {json.dumps(pre.get('recipe'))}.",
        "",
        "| | linear-probe AUROC (weapon patches, held-out images) |",
        "|---|---|",
        f"| random initialisation | {_fmt((pre.get('probe_before') or {}).get('auroc'))} |",
        f"| after pre-training | {_fmt((pre.get('probe_after') or {}).get('auroc'))} |",
        "",
        f"Pre-training: {json.dumps(pre.get('train'))}; held-out retrieval: {json.dumps(pre.get('heldout'))}.",
        "",
        f"Thresholds: {json.dumps(rep.get('thresholds'))}. Files: "
        + ", ".join(f"`{k}` ({v['bytes'] / 1e6:.1f} MB)" for k, v in rep["files"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def build(cfg: DemoConfig, force: bool = False) -> dict[str, Any]:
    """Run every stage (reusing cached ones) and return the report written to ``cfg.assets``."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    data = stage_synth(cfg, force)
    weights, pre = stage_pretrain(cfg, data, force)
    runs = {"dense": stage_train(cfg, data, weights, dense=True, force=force)}
    if cfg.ablation:
        runs["no-dense"] = stage_train(cfg, data, weights, dense=False, force=force)
    stage_export(cfg, weights, pre, runs)
    report = json.loads((Path(cfg.assets) / "report.json").read_text())
    log.info("demo-model built in %.1f s", time.perf_counter() - t0)
    return report


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument(
        "--work", default=d.work, help=f"working folder, reused as a cache (default {d.work})"
    )
    parser.add_argument("--assets", default=d.assets, help="output folder (default: dangerclip/assets/demo)")
    parser.add_argument(
        "--ci", action="store_true", help="toy sizes for tests (< 1 minute; figures mean nothing)"
    )
    parser.add_argument("--categories", default=",".join(d.categories), help="comma-separated prompts")
    parser.add_argument("--model", default=None, help=f"model config (default {d.model})")
    parser.add_argument(
        "--backbone",
        default=None,
        help="pre-trained CLIP weights to load (default: the committed training/assets/demo_backbone."
        "safetensors); 'none' pre-trains one here",
    )
    parser.add_argument(
        "--pretrain-device", default=None, help="cpu, cuda or auto (default auto: CUDA when present)"
    )
    parser.add_argument("--workers", type=int, default=None, help=f"drawing processes (default {d.workers})")
    parser.add_argument("--n-head", type=int, default=None, help=f"head set size (default {d.n_head})")
    parser.add_argument(
        "--n-pretrain", type=int, default=None, help=f"pre-training set (default {d.n_pretrain})"
    )
    parser.add_argument("--pretrain-steps", type=int, default=None, help=f"default {d.pretrain_steps}")
    parser.add_argument(
        "--pretrain-grayscale",
        type=float,
        default=None,
        help=f"share of pre-training images turned grey (default {d.pretrain_grayscale})",
    )
    parser.add_argument("--iterations", type=int, default=None, help=f"head steps (default {d.iterations})")
    parser.add_argument(
        "--color-views", type=int, default=None, help=f"colour-jittered cache views (default {d.color_views})"
    )
    parser.add_argument(
        "--grayscale", type=float, default=None, help=f"share of colour views turned grey (default {d.grayscale})"
    )
    parser.add_argument(
        "--global-words", action="store_true", help="pre-training: word term on the global embedding"
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip the no-dense ablation run")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--force", action="store_true", help="redo every stage even when cached")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig.ci(args.work, args.assets) if args.ci else DemoConfig(work=args.work, assets=args.assets)
    cfg.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    for name in (
        "model",
        "n_head",
        "n_pretrain",
        "pretrain_steps",
        "pretrain_grayscale",
        "pretrain_device",
        "workers",
        "iterations",
        "color_views",
        "grayscale",
    ):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.backbone is not None:
        cfg.backbone = "" if args.backbone.lower() in ("", "none") else args.backbone
    cfg.ablation = cfg.ablation and not args.no_ablation
    cfg.global_words = cfg.global_words or args.global_words
    cfg.threads = args.threads
    cfg.seed = args.seed
    return cfg


@exits_2_on_bad_input("demo-model")
def run(args: argparse.Namespace) -> int:
    """``dangerclip demo-model``: build (or reuse) every stage and print the headline figures as JSON."""
    cfg = config_from_args(args)
    cfg.validate()
    report = build(cfg, force=args.force)
    summary = {k: report.get(k) for k in ("dense", "no_dense", "thresholds")}
    summary["probe_auroc"] = {
        "before": (report["pretrain"].get("probe_before") or {}).get("auroc"),
        "after": (report["pretrain"].get("probe_after") or {}).get("auroc"),
    }
    summary["assets"] = str(Path(cfg.assets))
    print(json.dumps(summary, indent=1))
    return 0
