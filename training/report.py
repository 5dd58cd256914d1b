"""``report.md`` and its plots (PNG, matplotlib's Agg backend): PR curves, loss curves, danger-map grid.

Also renders the comparison table of several models (``summary_row``, ``comparison_table``) that
``training.baselines`` and the demo model's report use. Takes evaluation results as plain data and imports
nothing of ``training.evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dangerclip.runtime.card import ModelCard, PreprocessConfig
from dangerclip.runtime.preprocess import load_image, resize_and_crop
from training import metrics as M


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(
    pred: Any, categories: Sequence[str], path: str | Path, thresholds: dict[str, float] | None = None
) -> Path:
    """Precision-recall curve per category, with the operating point at its threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for j, c in enumerate(categories):
        y = pred.labels[:, j]
        if y.sum() == 0:
            continue
        p, r, _ = M.precision_recall_curve(pred.scores[:, j], y)
        ap = M.average_precision(pred.scores[:, j], y)
        ax.step(np.r_[0.0, r], np.r_[1.0, p], where="post", label=f"{c} (AP {ap:.3f})")
        if thresholds and c in thresholds:
            cnt = M.counts_at(pred.scores[:, j], y, thresholds[c])
            ax.plot([cnt.recall], [cnt.precision], "o", color=ax.lines[-1].get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title="Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss terms per step (and validation loss where logged)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    tr = [h for h in history if h.get("split") == "train"]
    va = [h for h in history if h.get("split") == "val"]
    for colour, key in zip(("C0", "C1", "C2", "C3"), ("loss", "bce", "focal", "dice"), strict=True):
        # The no-dense ablation logs zero dense terms: nothing to draw on a log scale.
        if tr and any(h[key] > 0 for h in tr):
            axes[0].plot([h["step"] for h in tr], [h[key] for h in tr], color=colour, label=f"train {key}")
        if va and any(h[key] > 0 for h in va):
            axes[0].plot([h["step"] for h in va], [h[key] for h in va], "--o", color=colour, ms=3, label=f"val {key}")
    axes[0].set(xlabel="step", ylabel="loss", title="Losses", yscale="log")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    for key in ("ap", "f1@0.5", "topk_iou", "pointing"):
        if va and key in va[0]:
            axes[1].plot(
                [h["step"] for h in va], [h[key] if h[key] is not None else np.nan for h in va], "-o", ms=3, label=key
            )
    axes[1].set(xlabel="step", title="Validation", ylim=(0, 1.02))
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_danger_grid(
    pred: Any,
    categories: Sequence[str],
    cfg: PreprocessConfig,
    path: str | Path,
    thresholds: dict[str, float] | None = None,
    map_thresholds: dict[str, float] | None = None,
    n: int = 12,
) -> Path:
    """A grid of images (as the model sees them) with the first category's danger map over them.

    Picks true positives, misses, false alarms and true negatives (in that order) so the grid shows the
    failure cases too. The map's contour at its threshold is drawn in white; the mask's in green.
    """
    plt = _plt()
    c0 = categories[0]
    th = (thresholds or {}).get(c0, 0.5)
    mth = (map_thresholds or {}).get(c0, 0.5)
    s, y = pred.scores[:, 0], pred.labels[:, 0]
    groups = [
        np.nonzero((y == 1) & (s >= th))[0],
        np.nonzero((y == 1) & (s < th))[0],
        np.nonzero((y == 0) & (s >= th))[0],
        np.nonzero((y == 0) & (s < th))[0],
    ]
    pick: list[int] = []
    for gi, g in enumerate(groups):
        want = {0: n // 2, 1: n // 6, 2: n // 6}.get(gi, n)
        pick.extend(g[: max(0, min(want, n - len(pick)))].tolist())
    for g in groups:  # fill up when some groups were short
        pick.extend([i for i in g.tolist() if i not in pick][: n - len(pick)])
    pick = pick[:n]
    cols = 4
    rows = max(1, math.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.1 * rows), squeeze=False)
    side = int(round(math.sqrt(pred.maps.shape[-1])))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick, strict=False):
        if pred.images:
            img = np.asarray(resize_and_crop(load_image(pred.images[i]), cfg))
        else:
            img = np.full((cfg.image_size, cfg.image_size, 3), 128, np.uint8)
        S = img.shape[0]
        m = pred.maps[i, 0].reshape(side, side)
        ax.imshow(img)
        # Opacity follows the map, so safe regions show the image as it is.
        ax.imshow(
            m,
            cmap="inferno",
            alpha=np.clip(0.15 + 0.6 * m, 0, 0.75),
            vmin=0,
            vmax=1,
            extent=(0, S, S, 0),
            interpolation="nearest",
        )
        if m.max() >= mth:
            ax.contour(np.linspace(0, S, side), np.linspace(0, S, side), m, levels=[mth], colors="white", linewidths=1)
        if pred.mask_valid[i, 0] and pred.masks[i, 0].max() > 0:
            ax.contour(
                np.linspace(0, S, side),
                np.linspace(0, S, side),
                pred.masks[i, 0].reshape(side, side),
                levels=[0.5],
                colors="lime",
                linewidths=1,
            )
        verdict = ("TP" if y[i] else "FP") if s[i] >= th else ("FN" if y[i] else "TN")
        ax.set_title(f"{verdict} score {s[i]:.2f} peak {m.max():.2f}", fontsize=8)
    fig.suptitle(f"'{c0}' danger maps (white: map >= {mth:.2f}, green: mask)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


SUMMARY_KEYS = ("precision", "recall", "f1", "ap", "roc_auc", "topk_iou", "pointing", "iou")
"""The columns of the comparison table."""


def summary_row(name: str, rep: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison table from an ``evaluate`` result (macro over categories; with one category,
    its own precision, recall and F1 at its threshold)."""
    m = rep["macro"]
    if len(rep["per_category"]) == 1:
        only = next(iter(rep["per_category"].values()))
        m = {**m, "precision": only["precision"], "recall": only["recall"], "f1": only["f1"]}
    return {"model": name, **{k: m.get(k, float("nan")) for k in SUMMARY_KEYS}}


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``summary_row`` dicts."""
    keys = SUMMARY_KEYS
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(_f(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def metrics_tables(rep: dict[str, Any]) -> str:
    """Per-category classification and localisation tables of one ``evaluate`` result."""
    lines = [
        "| category | n | pos | threshold | precision | recall | F1 | AP | ROC-AUC | confusion [[tn, fp], [fn, tp]] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c, r in rep["per_category"].items():
        lines.append(
            f"| {c} | {r['n']} | {r['positives']} | {_f(r['threshold'])} | {_f(r['precision'])} | "
            f"{_f(r['recall'])} | {_f(r['f1'])} | {_f(r['ap'])} | {_f(r['roc_auc'])} | "
            f"{r['confusion_matrix']} |"
        )
    if "any" in rep:
        a = rep["any"]
        lines.append(
            f"| any danger | | | | {_f(a['precision'])} | {_f(a['recall'])} | {_f(a['f1'])} | | | "
            f"{a['confusion_matrix']} |"
        )
    lines += [
        "",
        "| category | images with masks | top-k IoU | pointing | map threshold | IoU@threshold | "
        "IoU@0.5 | mean peak | peak ≥ threshold | negative area ≥ threshold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, r in rep["per_category"].items():
        loc = r["localisation"]
        lines.append(
            f"| {c} | {loc['n']} | {_f(loc['topk_iou'])} | {_f(loc['pointing'])} | "
            f"{_f(loc['map_threshold'])} | {_f(loc['iou'])} | {_f(loc['iou@0.5'])} | "
            f"{_f(loc['peak_mean'])} | {_f(loc['peak_above_threshold'])} | {_f(loc['negative_area'])} |"
        )
    if any("by_size" in r for r in rep["per_category"].values()):
        lines += [
            "",
            "| category | object size | positives with masks | recall | pointing | top-k IoU | IoU@threshold |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for c, r in rep["per_category"].items():
            for size, m in r.get("by_size", {}).items():
                lines.append(
                    f"| {c} | {size} | {m['n']} | {_f(m['recall'])} | {_f(m['pointing'])} | "
                    f"{_f(m['topk_iou'])} | {_f(m['iou'])} |"
                )
    return "\n".join(lines)


def write_report(
    out: Path,
    cfg: Any,
    metrics: dict[str, Any],
    history: Sequence[dict[str, Any]],
    pred: Any,
    card: ModelCard,
    extra_rows: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write ``<out>/report.md`` and ``<out>/plots/*.png``.

    Args:
        out: run folder.
        cfg: the ``TrainConfig``.
        metrics: ``{"val": evaluate(...), "test": evaluate(...)?}``.
        history: ``metrics.jsonl`` records.
        pred: predictions of the reported split (for the PR curve and image grid).
        card: the written model card.
        extra_rows: comparison-table rows of other models (baselines).
    """
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    cats = list(card.prompts)
    split = "test" if "test" in metrics else "val"
    plot_pr_curves(pred, cats, plots / "pr_curve.png", card.thresholds)
    plot_loss_curves(history, plots / "loss_curves.png")
    mth = {c: v for c, v in (card.metrics.get("map_thresholds") or {}).items()}
    plot_danger_grid(pred, cats, card.preprocess, plots / "danger_maps.png", card.thresholds, mth)
    name = f"DangerCLIP {card.name}" + ("" if cfg.dense else " w/o dense")
    rows = [summary_row(name, metrics[split]), *extra_rows]
    text = [
        f"# DangerCLIP training report: {card.name} v{card.version}",
        "",
        f"- data: `{cfg.data}`; categories: {', '.join(cats)}",
        f"- backbone: {card.backbone.model} ({card.backbone.pretrained or 'random init'}), "
        f"sha256 `{card.backbone.sha256[:16]}…`, frozen",
        f"- head trained {cfg.iterations} steps, batch {cfg.batch_size}, AdamW lr {cfg.lr:g} "
        f"(warm-up {cfg.warmup}, cosine), losses "
        + ("BCE + {1:g}·focal + {2:g}·dice".format(*cfg.loss_weights) if cfg.dense else "BCE only (no-dense ablation)"),
        f"- views per training image: {(cfg.color_views + 1) * (2 if cfg.flip else 1)} "
        f"(flip {'on' if cfg.flip else 'off'}, {cfg.color_views} colour"
        + (f", each grey with probability {cfg.grayscale:g})" if cfg.color_views else ")"),
        f"- thresholds chosen on val ({cfg.threshold_target}): "
        + ", ".join(f"{c} {t:.3f}" for c, t in card.thresholds.items()),
        "- maps: "
        + (
            "IoU-best val threshold ("
            + ", ".join(f"{c} {t:.3g}" for c, t in (card.metrics.get("map_thresholds_raw") or {}).items())
            + " on the trained map scale) folded into the map bias; served maps read danger at "
            + ", ".join(f"{c} {t:.2f}" for c, t in mth.items())
            if cfg.calibrate_maps
            else "uncalibrated; map thresholds " + ", ".join(f"{c} {t:.3g}" for c, t in mth.items())
        ),
        "",
        f"## Results on the {split} split",
        "",
        comparison_table(rows),
        "",
        metrics_tables(metrics[split]),
        "",
        "top-k IoU: the k highest map patches against the k mask patches (threshold-free); pointing: the map's "
        "peak lies on the object; IoU@threshold: the map cut at its threshold.",
        "",
        "## Validation split",
        "",
        metrics_tables(metrics["val"]),
        "",
        "## Plots",
        "",
        "![precision-recall](plots/pr_curve.png)",
        "",
        "![losses](plots/loss_curves.png)",
        "",
        "![danger maps](plots/danger_maps.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
