"""``training.report``: the comparison rows and tables, the plots, and ``report.md`` of a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dangerclip.runtime.card import BackboneIdentity, ModelCard, PreprocessConfig
from training import evaluate as E
from training import report as R
from training.config import TrainConfig

CATS = ["weapon"]


def _pred(n: int = 12, seed: int = 0) -> E.Predictions:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).reshape(n, 1)
    scores = np.clip(0.3 * labels + rng.random((n, 1)) * 0.7, 0, 1)
    masks = np.zeros((n, 1, 4), np.float32)
    masks[labels[:, 0] == 1, 0, 1] = 1.0
    maps = rng.random((n, 1, 4)).astype(np.float32)
    return E.Predictions(scores, maps, labels, masks, np.ones((n, 1), bool))


def _card() -> ModelCard:
    return ModelCard(
        name="tiny",
        version="1.2.3",
        mode="trained",
        prompts=CATS,
        thresholds={"weapon": 0.5},
        preprocess=PreprocessConfig(image_size=32),
        backbone=BackboneIdentity("tiny", "", "ab" * 32),
        grid=(2, 2),
        metrics={"map_thresholds": {"weapon": 0.5}, "map_thresholds_raw": {"weapon": 0.21}},
    )


def _is_png(path: Path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100


def test_summary_row_uses_the_only_category_and_the_table_prints_missing_values() -> None:
    rep = E.evaluate(_pred(), CATS, {"weapon": 0.5})
    row = R.summary_row("DangerCLIP tiny", rep)
    only = rep["per_category"]["weapon"]
    assert row["model"] == "DangerCLIP tiny" and set(row) == {"model", *R.SUMMARY_KEYS}
    assert (row["precision"], row["recall"], row["f1"]) == (only["precision"], only["recall"], only["f1"])
    assert row["iou"] == rep["macro"]["iou"] and row["topk_iou"] == rep["macro"]["topk_iou"]
    two = R.summary_row("m", {"per_category": {"a": {}, "b": {}}, "macro": {"precision": 0.25}})
    assert two["precision"] == 0.25 and math.isnan(two["f1"])  # several categories: the macro figures
    table = R.comparison_table([row, {"model": "zero-shot", "f1": None, "ap": float("nan")}]).splitlines()
    assert table[0].startswith("| model | precision | recall | f1 |") and len(table) == 4
    assert table[3].startswith("| zero-shot | – | – | – | – |")
    assert f"| {row['f1']:.3f} |" in table[2]


def test_metrics_tables_list_every_category_and_the_any_row() -> None:
    p = _pred()
    two = E.Predictions(np.hstack([p.scores, 1 - p.scores]), np.hstack([p.maps, p.maps]),
                        np.hstack([p.labels, 1 - p.labels]), np.hstack([p.masks, p.masks]),
                        np.hstack([p.mask_valid, p.mask_valid]))  # fmt: skip
    text = R.metrics_tables(E.evaluate(two, ["gun", "knife"], {"gun": 0.5, "knife": 0.4}, {"gun": 0.5}))
    lines = text.splitlines()
    assert sum(line.startswith("| gun |") for line in lines) == 5  # classification, localisation, 3 object sizes
    assert sum(line.startswith("| knife |") for line in lines) == 5
    assert [line.split("|")[2].strip() for line in lines if line.startswith("| gun |")][2:] == [
        "small",
        "medium",
        "large",
    ]
    assert any(line.startswith("| any danger |") for line in lines)


def test_plots_are_written(tmp_path: Path) -> None:
    pred = _pred()
    assert _is_png(R.plot_pr_curves(pred, CATS, tmp_path / "pr.png", {"weapon": 0.5}))
    history = [
        {"step": 1, "split": "train", "loss": 1.0, "bce": 0.6, "focal": 0.3, "dice": 0.1},
        {"step": 2, "split": "train", "loss": 0.5, "bce": 0.3, "focal": 0.1, "dice": 0.1},
        {"step": 2, "split": "val", "loss": 0.7, "bce": 0.4, "focal": 0.0, "dice": 0.3, "ap": 0.6,
         "f1@0.5": 0.5, "topk_iou": 0.2, "pointing": None},
    ]  # fmt: skip
    assert _is_png(R.plot_loss_curves(history, tmp_path / "loss.png"))
    grid = R.plot_danger_grid(pred, CATS, PreprocessConfig(image_size=32), tmp_path / "maps.png", n=6)
    assert _is_png(grid)


@pytest.mark.parametrize("dense", [True, False])
def test_write_report_describes_the_run_and_links_its_plots(tmp_path: Path, dense: bool) -> None:
    cfg = TrainConfig(data="set/manifest.jsonl", dense=dense, iterations=40, color_views=1)
    val, test = _pred(seed=1), _pred(seed=2)
    metrics = {"val": E.evaluate(val, CATS, {"weapon": 0.5}, {"weapon": 0.5}),
               "test": E.evaluate(test, CATS, {"weapon": 0.5}, {"weapon": 0.5})}  # fmt: skip
    extra = [{"model": "ResNet-50 (random init)", "f1": 0.5}]
    path = R.write_report(tmp_path, cfg, metrics, [], test, _card(), extra_rows=extra)
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.md"
    assert text.startswith("# DangerCLIP training report: tiny v1.2.3")
    assert "## Results on the test split" in text and "## Validation split" in text
    assert "| ResNet-50 (random init) |" in text
    assert "views per training image: 4 (flip on, 1 colour, each grey with probability 0.2)" in text
    assert "weapon 0.21 on the trained map scale" in text  # the calibration folded into the map bias
    if dense:
        assert "| DangerCLIP tiny |" in text and "BCE + 2·focal + 1·dice" in text
    else:
        assert "| DangerCLIP tiny w/o dense |" in text and "BCE only (no-dense ablation)" in text
    for name in ("pr_curve.png", "loss_curves.png", "danger_maps.png"):
        assert f"(plots/{name})" in text and _is_png(tmp_path / "plots" / name)
