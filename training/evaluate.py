"""Evaluation of a DangerCLIP model: predictions, threshold choice, metrics, and ``dangerclip eval``.

Predictions come from cached backbone features (during and after training: the same numbers as running
the images, up to fp16 storage) or from the images themselves, through a torch checkpoint or through the
exported ONNX file (``DangerScorer``), so the model that is served can be evaluated exactly as served.
Thresholds are chosen on the validation split and metrics reported on the test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.commandline import exits_2_on_bad_input
from dangerclip.runtime.filekind import expect
from dangerclip.runtime.files import jsonable, write_json
from dangerclip.runtime.manifest import ManifestRow
from dangerclip.runtime.preprocess import load_image, preprocess_batch
from training import metrics as M
from training.data import assign_splits, load_rows, row_mask_grid

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """A model's outputs on a set of images, with the truth.

    Attributes:
        scores: ``[n, k]`` probabilities.
        maps: ``[n, k, P]`` per-patch probabilities (last layer), ``P = h * w`` row-major.
        labels: ``[n, k]`` 0/1.
        masks: ``[n, k, P]`` grid coverage of the masks.
        mask_valid: ``[n, k]`` bool.
        images: ``[n]`` image paths (for the image grid).
    """

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    mask_valid: np.ndarray
    images: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def predict_features(model: Any, cache: Any, batch_size: int = 256) -> Predictions:
    """Run the head on a feature cache's plain view (view 0) of every decodable row.

    Args:
        model: a ``DangerCLIP`` (its head runs; the backbone is not needed).
        cache: a ``training.cache.FeatureCache``.
        batch_size: rows per head call.
    """
    import torch

    idx = cache.valid_indices
    dev = next(iter(model.head.buffers())).device
    was_training = model.head.training
    model.head.eval()
    scores, maps = [], []
    try:
        with torch.inference_mode():
            for s in range(0, idx.size, batch_size):
                b = cache.batch(idx[s : s + batch_size])
                out = model.head(b["g"].to(dev), b["patches"].to(dev))
                scores.append(torch.sigmoid(out.logits.float()).cpu().numpy())
                maps.append(torch.sigmoid(out.map_logits[-1].float()).cpu().numpy())
    finally:
        model.head.train(was_training)
    images = cache.meta.get("image_paths") or []
    return Predictions(
        scores=np.concatenate(scores) if scores else np.zeros((0, cache.labels.shape[1])),
        maps=np.concatenate(maps) if maps else np.zeros((0,) + cache.masks.shape[1:]),
        labels=cache.labels[idx].astype(np.int64),
        masks=cache.masks[idx],
        mask_valid=cache.mask_valid[idx],
        images=[images[i] for i in idx] if images else [],
    )


def predict_images(
    model: Any, rows: Sequence[ManifestRow], categories: Sequence[str], batch_size: int = 32
) -> Predictions:
    """Decode and run every row's image through a torch ``DangerCLIP`` or an ONNX ``DangerScorer``.

    Rows whose image or mask cannot be decoded raise (``load_rows`` + the cache catch those earlier).
    """
    card = model.card
    cfg: PreprocessConfig = card.preprocess
    grid = tuple(card.grid)
    scores, maps, masks, valid = [], [], [], []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        imgs = [load_image(r.image) for r in chunk]
        for r, im in zip(chunk, imgs, strict=True):
            m, v = row_mask_grid(r, categories, im.size, grid, cfg)  # type: ignore[arg-type]
            masks.append(m)
            valid.append(v)
        x = preprocess_batch(imgs, cfg)
        sc, mp = _run(model, x)
        scores.append(sc)
        maps.append(mp.reshape(mp.shape[0], mp.shape[1], -1))
    return Predictions(
        scores=np.concatenate(scores),
        maps=np.concatenate(maps),
        labels=np.array([[r.labels.get(c, 0) for c in categories] for r in rows], np.int64),
        masks=np.stack(masks),
        mask_valid=np.stack(valid),
        images=[r.image for r in rows],
    )


def _run(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(model, "predict"):  # DangerScorer (onnxruntime)
        return model.predict(x)
    import torch

    dev = next(model.head.buffers()).device
    with torch.inference_mode():
        out = model(torch.from_numpy(x).to(dev))
    return out.scores.float().cpu().numpy(), out.maps.float().cpu().numpy()


def choose_thresholds(
    pred: Predictions, categories: Sequence[str], *, target: str = "f1", min_precision: float | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Score thresholds and map thresholds per category, chosen on (validation) predictions.

    Returns:
        ``(thresholds, map_thresholds)``: the score threshold for ``target``, and the map threshold with
        the best mean IoU on positives that have a mask (0.5 where none has).
    """
    th, mth = {}, {}
    for j, c in enumerate(categories):
        th[c] = M.choose_threshold(pred.scores[:, j], pred.labels[:, j], target=target, min_precision=min_precision)
        mth[c] = M.choose_map_threshold(pred.maps[:, j], pred.masks[:, j], pred.labels[:, j], pred.mask_valid[:, j])
    return th, mth


def evaluate(
    pred: Predictions,
    categories: Sequence[str],
    thresholds: dict[str, float],
    map_thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Classification and localisation metrics per category (and macro / any-danger for k > 1).

    Returns:
        ``{"n", "per_category": {c: {classification..., "localisation": {...}}}, "macro", "any"?}``.
    """
    cats = list(categories)
    tv = [float(thresholds.get(c, 0.5)) for c in cats]
    rep = M.multilabel_report(pred.scores, pred.labels, tv, cats)
    mth = map_thresholds or {}
    for j, c in enumerate(cats):
        args = (pred.maps[:, j], pred.masks[:, j], pred.labels[:, j], pred.mask_valid[:, j])
        rep["per_category"][c]["localisation"] = M.localisation_report(*args, mth.get(c, 0.5))
        rep["per_category"][c]["by_size"] = M.by_object_size(pred.scores[:, j], *args, tv[j], mth.get(c, 0.5))
    loc_keys = ("topk_iou", "pointing", "iou", "iou@0.5")
    for key in loc_keys:
        vals = [rep["per_category"][c]["localisation"][key] for c in cats]
        vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
        rep["macro"][key] = float(np.mean(vals)) if vals else float("nan")
    rep["n"] = len(pred)
    return rep


def card_metrics(
    val: dict[str, Any], test: dict[str, Any] | None, map_thresholds: dict[str, float], split: str
) -> dict[str, Any]:
    """The compact metrics block written into the model card."""

    def brief(rep: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": rep["n"]}
        for c, r in rep["per_category"].items():
            loc = r["localisation"]
            out[c] = {k: r[k] for k in ("threshold", "precision", "recall", "f1", "ap", "roc_auc")}
            out[c].update({k: loc[k] for k in ("topk_iou", "pointing", "iou", "map_threshold")})
        return out

    d: dict[str, Any] = {"val": brief(val), "map_thresholds": dict(map_thresholds)}
    if test is not None:
        d[split] = brief(test)
    return jsonable(d)


# --- `dangerclip eval` ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint (.safetensors) or exported model (.onnx)")
    parser.add_argument("data", help="manifest (.jsonl/.csv) or folder <root>/<category or negative>/*")
    parser.add_argument("--split", default="test", help="split to report on: train/val/test/all (default: test)")
    parser.add_argument(
        "--choose-thresholds",
        action="store_true",
        help="choose thresholds on the val split instead of using the card's",
    )
    parser.add_argument("--threshold-target", choices=("f1", "precision"), default="f1")
    parser.add_argument("--min-precision", type=float, default=0.9)
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="write the chosen thresholds and metrics into the checkpoint's card (.safetensors)",
    )
    parser.add_argument("--pretrained", default=None, help="CLIP weights for a checkpoint without them")
    parser.add_argument("--out", default="", help="folder for eval.json and plots (default: print only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-bad", action="store_true", help="drop bad manifest rows instead of stopping")
    parser.add_argument("--device", default="cpu")


def load_model(path: str | Path, pretrained: str | None = None, device: str = "cpu") -> Any:
    """A ``DangerCLIP`` for a ``.safetensors`` checkpoint or a ``DangerScorer`` for an ``.onnx`` file."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        from dangerclip.runtime.scorer import DangerScorer

        return DangerScorer(p)
    from dangerclip.modeling.checkpoint import load_checkpoint

    return load_checkpoint(p, pretrained=pretrained, device=device).eval()


@exits_2_on_bad_input("eval")
def run(args: argparse.Namespace) -> int:
    """``dangerclip eval``: metrics of a checkpoint or ONNX model on a manifest's split, as JSON."""
    expect(args.model, "checkpoint", "onnx", what="model")
    model = load_model(args.model, args.pretrained, args.device)
    card = model.card
    cats = list(card.prompts)
    rows = load_rows(args.data, cats, skip_bad=args.skip_bad)
    splits = assign_splits(rows)
    if args.split == "all":
        eval_rows = list(rows)
    elif args.split in splits:
        eval_rows = [rows[i] for i in splits[args.split]]
    else:
        raise SystemExit(f"unknown split {args.split!r}; expected train, val, test or all")
    if not eval_rows:
        raise SystemExit(f"{args.data}: the {args.split!r} split is empty (use --split all)")
    thresholds = dict(card.thresholds)
    map_thresholds = {c: float(v) for c, v in (card.metrics or {}).get("map_thresholds", {}).items()}
    val_rep = None
    if args.choose_thresholds or args.write_card:
        val_rows = [rows[i] for i in splits["val"]]
        if not val_rows:
            raise SystemExit(f"{args.data}: no val split to choose thresholds on")
        vp = predict_images(model, val_rows, cats, args.batch_size)
        thresholds, map_thresholds = choose_thresholds(
            vp, cats, target=args.threshold_target, min_precision=args.min_precision
        )
        val_rep = evaluate(vp, cats, thresholds, map_thresholds)
    pred = predict_images(model, eval_rows, cats, args.batch_size)
    rep = evaluate(pred, cats, thresholds, map_thresholds)
    result = {
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "thresholds": thresholds,
        "map_thresholds": map_thresholds,
        "metrics": rep,
    }
    if args.write_card:
        if Path(args.model).suffix.lower() == ".onnx":
            raise SystemExit("--write-card needs a .safetensors checkpoint (re-export it afterwards)")
        from dangerclip.modeling.checkpoint import save_checkpoint

        assert val_rep is not None
        save_checkpoint(
            model,
            args.model,
            thresholds=thresholds,
            metrics={**(card.metrics or {}), **card_metrics(val_rep, rep, map_thresholds, args.split)},
        )
        log.info("wrote thresholds %s into %s", thresholds, args.model)
    if args.out:
        from training import report

        out = Path(args.out)
        write_json(out / "eval.json", result)
        report.plot_pr_curves(pred, cats, out / "pr_curve.png", thresholds)
        report.plot_danger_grid(pred, cats, card.preprocess, out / "danger_maps.png", thresholds, map_thresholds)
    print(json.dumps(jsonable(result), indent=1))
    return 0
