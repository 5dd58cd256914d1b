"""The paper's baselines, for the comparison table: ResNet-50 and VGG-16 fine-tuned end to end with a
sigmoid head, and the zero-shot CLIP score.

The CNNs are torchvision models: ImageNet weights come from a local file (``--resnet-weights``,
``--vgg-weights``: a torchvision state dict, ``.pth``/``.pt``/``.safetensors``); without one they start
from random initialisation (and the table says so). They see the same pixels as DangerCLIP (the one
preprocessing path, with ImageNet statistics) and the same augmentation (flip and Detectron2-style colour
jitter, drawn per step), and are trained as the paper trained them: 20 epochs, learning rate 0.005 (SGD
with momentum 0.9, cosine decay). The zero-shot row is ``create_model(..., mode="zeroshot")`` on the same
feature cache as training. Thresholds are chosen on val, metrics reported on test, for every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dangerclip.modeling.device import resolve_device
from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from dangerclip.runtime.files import atomic_write_text, write_json
from dangerclip.runtime.manifest import ManifestRow
from dangerclip.runtime.preprocess import load_image, normalize, resize_and_crop
from training import evaluate as E
from training.data import ViewRecipe, assign_splits, color_jitter, load_rows
from training.optim import OptimStep, warmup_cosine
from training.report import comparison_table, summary_row

log = logging.getLogger(__name__)

ARCHS = ("resnet50", "vgg16")


@dataclass
class CNNConfig:
    """A fine-tuning run of a torchvision CNN."""

    arch: str = "resnet50"
    """``resnet50`` or ``vgg16``."""
    weights: str = ""
    """Local torchvision state-dict file ("" = random init)."""
    categories: list[str] = field(default_factory=lambda: ["weapon"])
    """Model categories (one sigmoid output each)."""
    epochs: int = 20
    """Passes over the training split (paper: 20)."""
    lr: float = 0.005
    """SGD learning rate (paper: 0.005)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    batch_size: int = 32
    """Images per step."""
    image_size: int = 224
    """Input side (224 as in the paper; smaller for quick runs)."""
    max_steps: int = 0
    """Stop after this many steps (0 = ``epochs`` worth)."""
    flip: bool = True
    """Random horizontal flip."""
    color: bool = True
    """Random colour jitter (Detectron2's ColorAugSSD), probability ½ per image."""
    seed: int = 0
    """Initialisation, order and augmentation seed."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``."""


def build_cnn(arch: str, num_outputs: int, weights: str = "") -> nn.Module:
    """A torchvision ResNet-50 or VGG-16 whose last layer gives ``num_outputs`` logits.

    Args:
        arch: ``resnet50`` or ``vgg16``.
        num_outputs: categories.
        weights: a local state dict of the torchvision model (its 1000-class layer is replaced); "" for
            random initialisation.

    Raises:
        ValueError: unknown arch, or weights that do not fit the architecture.
    """
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown baseline {arch!r}; choose one of {ARCHS}")
    model = getattr(torchvision.models, arch)(weights=None)
    if weights:
        sd = _read_state_dict(weights)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} is not a torchvision {arch} state dict: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        log.info("%s: loaded weights from %s", arch, weights)
    else:
        log.warning("%s: no weights file given; random initialisation (not the paper's ImageNet start)", arch)
    if arch == "resnet50":
        model.fc = nn.Linear(model.fc.in_features, num_outputs)
    else:
        last = model.classifier[6]
        model.classifier[6] = nn.Linear(last.in_features, num_outputs)
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_crops(rows: Sequence[ManifestRow], cfg: PreprocessConfig) -> np.ndarray:
    """``[n, S, S, 3]`` uint8: each image resized and cropped once (augmentation then works on these)."""
    return np.stack([np.asarray(resize_and_crop(load_image(r.image), cfg), np.uint8) for r in rows])


def _labels(rows: Sequence[ManifestRow], cats: Sequence[str]) -> np.ndarray:
    return np.array([[r.labels.get(c, 0) for c in cats] for r in rows], np.float32)


def _predict_cnn(
    model: nn.Module, crops: np.ndarray, pcfg: PreprocessConfig, device: torch.device, batch: int = 32
) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(crops), batch):
            x = torch.from_numpy(np.stack([normalize(c, pcfg) for c in crops[s : s + batch]])).to(device)
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out)


def train_cnn(cfg: CNNConfig, splits: dict[str, list[ManifestRow]]) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a CNN end to end; thresholds on val, metrics on test.

    Args:
        cfg: the run.
        splits: ``{"train": rows, "val": rows, "test": rows}``.

    Returns:
        ``(model, {"row", "metrics", "thresholds", "steps", "seconds"})``.
    """
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    pcfg = PreprocessConfig(image_size=cfg.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cats = cfg.categories
    crops = {s: _load_crops(r, pcfg) for s, r in splits.items() if r}
    y_train = _labels(splits["train"], cats)
    model = build_cnn(cfg.arch, len(cats), cfg.weights).to(device)
    n = len(splits["train"])
    total = cfg.max_steps or cfg.epochs * max(1, math.ceil(n / cfg.batch_size))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optim_step = OptimStep(opt, list(model.parameters()), scheduler=warmup_cosine(opt, total, 0, 0.0))
    rng = np.random.default_rng(cfg.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    losses: list[float] = []
    for step, idx in enumerate(_epoch_batches(n, cfg.batch_size, total, rng), 1):
        xb = torch.from_numpy(_augmented(crops["train"], idx, rng, cfg, pcfg)).to(device)
        loss = loss_fn(model(xb), torch.from_numpy(y_train[idx]).to(device))
        optim_step(loss)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            log.info("%s step %d/%d loss %.4f", cfg.arch, step, total, float(np.mean(losses[-20:])))
    th, rep = _threshold_and_measure(model, splits, crops, pcfg, cats, device)
    name = f"{'ResNet-50' if cfg.arch == 'resnet50' else 'VGG-16'} ({'pretrained' if cfg.weights else 'random init'})"
    return model, {
        "row": summary_row(name, rep),
        "metrics": rep,
        "thresholds": th,
        "steps": len(losses),
        "seconds": time.monotonic() - t0,
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "config": asdict(cfg),
    }


def _epoch_batches(n: int, batch_size: int, total: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``total`` batches of row indices, each epoch a fresh permutation (its last batch may be short)."""
    step = 0
    while step < total:
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            if step >= total:
                return
            yield perm[s : s + batch_size]
            step += 1


def _augmented(
    crops: np.ndarray, idx: np.ndarray, rng: np.random.Generator, cfg: CNNConfig, pcfg: PreprocessConfig
) -> np.ndarray:
    """``[B, 3, S, S]`` inputs: each crop colour-jittered and mirrored with probability ½ (as configured)."""
    recipe = ViewRecipe()
    xs = []
    for i in idx:
        c = crops[i]
        if cfg.color and rng.random() < 0.5:
            c = color_jitter(c, rng, recipe)
        x = normalize(c, pcfg)
        if cfg.flip and rng.random() < 0.5:
            x = np.ascontiguousarray(x[:, :, ::-1])
        xs.append(x)
    return np.stack(xs)


def _threshold_and_measure(
    model: nn.Module,
    splits: dict[str, list[ManifestRow]],
    crops: dict[str, np.ndarray],
    pcfg: PreprocessConfig,
    cats: Sequence[str],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Thresholds chosen on val (train when there is none), metrics on test (val when there is none)."""
    val_key = "val" if splits.get("val") else "train"
    test_key = "test" if splits.get("test") else val_key
    preds = {}
    for key in {val_key, test_key}:
        sc = _predict_cnn(model, crops[key], pcfg, device)
        p = len(cats)
        preds[key] = E.Predictions(
            sc,
            np.zeros((len(sc), p, 1)),
            _labels(splits[key], cats).astype(np.int64),
            np.zeros((len(sc), p, 1)),
            np.zeros((len(sc), p), bool),
            [r.image for r in splits[key]],
        )
    th, _ = E.choose_thresholds(preds[val_key], cats)
    return th, E.evaluate(preds[test_key], cats, th)


def zeroshot(
    splits: dict[str, list[ManifestRow]],
    categories: Sequence[str],
    clip_model: str = "tiny",
    pretrained: str = "",
    cache_dir: str | Path = "runs/cache",
    seed: int = 0,
) -> dict[str, Any]:
    """The zero-shot CLIP score (``mode="zeroshot"``) on the same data: threshold on val, metrics on test.

    Features come from the feature cache (the same as training's when the backbone is the same).
    """
    from dangerclip.modeling.factory import create_model
    from training.cache import build_or_load
    from training.data import PLAIN

    t0 = time.monotonic()
    model = create_model(clip_model, pretrained or None, prompts=list(categories), mode="zeroshot", seed=seed).eval()
    preds = {}
    for key in ("val", "test"):
        if splits.get(key):
            cache = build_or_load(
                model.backbone, splits[key], categories, model.card.preprocess, model.grid, PLAIN, cache_dir, key
            )
            preds[key] = E.predict_features(model, cache)
    val_key = "val" if "val" in preds else "test"
    th, mth = E.choose_thresholds(preds[val_key], categories)
    rep = E.evaluate(preds.get("test", preds[val_key]), categories, th, mth)
    name = f"zero-shot CLIP {clip_model} ({pretrained or 'random init'})"
    return {
        "row": summary_row(name, rep),
        "metrics": rep,
        "thresholds": th,
        "map_thresholds": mth,
        "seconds": time.monotonic() - t0,
    }


def run_rows(run_dir: str | Path) -> dict[str, Any]:
    """The comparison-table row of a finished ``dangerclip train`` run (its ``eval.json``, test split)."""
    d = Path(run_dir)
    ev = json.loads((d / "eval.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    split = "test" if "test" in ev["metrics"] else "val"
    rep = ev["metrics"][split]
    nan = float("nan")
    rep = json.loads(json.dumps(rep), parse_constant=float)
    for r in rep["per_category"].values():
        for k, v in list(r.items()):
            r[k] = nan if v is None else v
    rep["macro"] = {k: nan if v is None else v for k, v in rep["macro"].items()}
    name = f"DangerCLIP {cfg.get('model', '')}" + ("" if cfg.get("dense", True) else " w/o dense")
    return summary_row(name, rep)


# --- `dangerclip baselines` ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="manifest or folder (same splits as training: split field or id hash)")
    add_options(parser, CNNConfig, exclude=("arch", "weights"))
    parser.add_argument("--out", default="runs/baselines", help="folder for baselines.json and baselines.md")
    parser.add_argument(
        "--models", nargs="+", default=["resnet50", "vgg16", "zeroshot"], choices=("resnet50", "vgg16", "zeroshot")
    )
    parser.add_argument("--resnet-weights", default="", help="local torchvision ResNet-50 state dict")
    parser.add_argument("--vgg-weights", default="", help="local torchvision VGG-16 state dict")
    parser.add_argument("--clip-model", default="tiny", help="DangerCLIP config of the zero-shot row")
    parser.add_argument("--pretrained", default="", help="CLIP weights of the zero-shot row")
    parser.add_argument("--cache-dir", default="", help="feature cache (default <out>/cache)")
    parser.add_argument(
        "--with-run",
        action="append",
        default=[],
        help="a finished `dangerclip train` folder whose test row joins the table (repeatable)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="drop bad manifest rows instead of stopping")


@exits_2_on_bad_input("baselines")
def run(args: argparse.Namespace) -> int:
    """``dangerclip baselines``: the comparison table (markdown on stdout, JSON and markdown in ``--out``)."""
    base = CNNConfig(**given_options(CNNConfig, args))
    cats = base.categories
    rows = load_rows(args.data, cats, skip_bad=args.skip_bad)
    idx = assign_splits(rows)
    splits = {s: [rows[i] for i in idx[s]] for s in ("train", "val", "test")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in args.models:
        if name == "zeroshot":
            results[name] = zeroshot(
                splits, cats, args.clip_model, args.pretrained, args.cache_dir or out / "cache", base.seed
            )
        else:
            weights = args.resnet_weights if name == "resnet50" else args.vgg_weights
            _, results[name] = train_cnn(dataclasses.replace(base, arch=name, weights=weights), splits)
        log.info("%s: %s", name, results[name]["row"])
    table_rows = [run_rows(d) for d in args.with_run] + [r["row"] for r in results.values()]
    md = "\n".join(
        [
            "# Baselines",
            "",
            f"data: `{args.data}` (test split; thresholds chosen on val)",
            "",
            comparison_table(table_rows),
            "",
        ]
    )
    atomic_write_text(out / "baselines.md", md)
    write_json(out / "baselines.json", {"rows": table_rows, "results": results})
    print(md)
    return 0
