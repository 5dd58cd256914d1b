"""The last stage: the dense model (checkpoint with its vision tower, ONNX) and the reports (``report.json``,
``report.md``) written into the assets folder."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dangerclip.runtime.files import atomic_write_text, write_json
from training.demo_model.config import DemoConfig
from training.report import summary_row

log = logging.getLogger(__name__)


def _brief(eval_json: Path, split: str) -> dict[str, Any]:
    """The headline figures of one run's split (macro over categories; P/R/F1 of the only one when k = 1)."""
    ev = json.loads(eval_json.read_text())
    return _row(ev["metrics"].get(split) or ev["metrics"]["val"], split)


def _replaced(onnx_path: Path, manifest: Path, split: str) -> dict[str, Any] | None:
    """The figures of the model this build replaces, on the same split of the same data (its own thresholds):
    the "before" of a rebuild. None when there is none, or it cannot be read."""
    if not onnx_path.is_file():
        return None
    from dangerclip.runtime.scorer import DangerScorer
    from training.data import assign_splits, load_rows
    from training.evaluate import evaluate, predict_images

    try:
        model = DangerScorer(onnx_path, providers="cpu")
    except Exception as e:  # noqa: BLE001 - a report without "before" is still a report
        log.warning("cannot evaluate the replaced model %s: %s", onnx_path, e)
        return None
    cats = list(model.card.prompts)
    rows = load_rows(manifest, cats)
    test = [rows[i] for i in assign_splits(rows)[split]]
    mth = {c: float(v) for c, v in (model.card.metrics or {}).get("map_thresholds", {}).items()}
    row = _row(evaluate(predict_images(model, test, cats), cats, dict(model.card.thresholds), mth), split)
    row["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return row


def _row(rep: dict[str, Any], split: str) -> dict[str, Any]:
    row = summary_row(split, rep)
    row.pop("model", None)
    row["iou@threshold"] = row.pop("iou", None)
    row["n"] = rep.get("n")
    first = next(iter(rep["per_category"].values()))
    if "by_size" in first:
        row["by_size"] = first["by_size"]
    return row


def stage_export(
    cfg: DemoConfig,
    weights: Path,
    pre: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    command: str = "dangerclip demo-model",
    manifest: Path | None = None,
) -> Path:
    """Write the dense model (checkpoint with its vision tower, ONNX) and the reports into ``cfg.assets``.

    Args:
        cfg: the build.
        weights: the backbone's weights file; ``pre``: its stage record (probe, recipe).
        runs: the head stages' records by name (``dense``, ``no-dense``).
        command: the command line that made it, for the report.
        manifest: the head's data; the model these assets held before is evaluated on its test split (``before``).
    """
    from dangerclip.modeling.checkpoint import load_checkpoint, save_checkpoint
    from dangerclip.modeling.export import export_onnx
    from dangerclip.runtime.card import BackboneIdentity

    assets = Path(cfg.assets)
    assets.mkdir(parents=True, exist_ok=True)
    before = _replaced(assets / "model.onnx", manifest, "test") if manifest is not None else None
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
        "command": command,
        "config": asdict(cfg),
        "pretrain": {k: pre.get(k) for k in ("train", "heldout", "probe_before", "probe_after", "recipe", "source")},
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
    if before is not None:
        report["before"] = before
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
        "Built by `" + rep["command"] + "` (`training/demo_model/`). Synthetic data only: these figures show",
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
        ("the model this build replaced", "before"),
    ):
        if key in rep:
            lines.append(f"| {name} | " + " | ".join(_fmt(rep[key].get(c)) for c in cols) + " |")
    names = (("dense", "dense"), ("no-dense", "no_dense"), ("replaced", "before"))
    sized = [(name, rep[key].get("by_size")) for name, key in names if key in rep]
    if any(b for _, b in sized):
        lines += [
            "",
            "By object size (share of the image the weapon covers: small < 1/49, medium < 9/49, large above; COCO's",
            "32² and 96² px at 224 px):",
            "",
            "| model | size | n | recall | pointing | topk_iou | iou@threshold |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, b in sized:
            for size, m in (b or {}).items():
                lines.append(
                    f"| {name} | {size} | {m['n']} | {_fmt(m['recall'])} | {_fmt(m['pointing'])} | "
                    f"{_fmt(m['topk_iou'])} | {_fmt(m['iou'])} |"
                )
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
