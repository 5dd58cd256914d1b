"""Evaluation: numbers on a fixed prediction set match hand-computed ones; ``dangerclip eval`` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from test_data import make_dataset

from dangerclip.modeling.checkpoint import load_checkpoint, save_checkpoint
from dangerclip.runtime.preprocess import load_image
from dangerclip_cli.main import main as cli_main
from training import evaluate as E
from training.cache import build_or_load
from training.data import PLAIN, load_rows
from training.finish import calibrate_map_bias
from training.report import summary_row


def _fixed() -> E.Predictions:
    # Scores sorted high to low with labels 1 1 0 1 0 0 1 0 (hand-worked in test_metrics too);
    # 2x2 maps: image 0 finds its mask exactly, image 1 points beside it; others have no mask.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])[:, None]
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])[:, None]
    maps = np.full((8, 1, 4), 0.1)
    masks = np.zeros((8, 1, 4))
    valid = np.zeros((8, 1), bool)
    maps[0, 0] = [0.8, 0.7, 0.1, 0.1]
    masks[0, 0] = [1, 1, 0, 0]
    maps[1, 0] = [0.1, 0.1, 0.9, 0.2]
    masks[1, 0] = [1, 0, 0, 0]
    valid[[0, 1, 2], 0] = True  # image 2 is a negative: its (empty) mask is exact
    maps[2, 0] = [0.6, 0.1, 0.1, 0.1]
    return E.Predictions(scores, maps, labels, masks, valid)


def test_evaluate_matches_hand_computed_numbers() -> None:
    pred = _fixed()
    th, mth = E.choose_thresholds(pred, ["weapon"])
    assert th["weapon"] == pytest.approx(0.575)  # best F1 (0.75) at score 0.6, half way to 0.55
    # Map threshold: image 0's mask {0,1} is exactly the patches >= t for t in (0.2, 0.7]; image 1 can only
    # score 0 (its mask patch is at 0.1, below its other patches), so the best mean IoU is 0.5 at t = 0.7.
    assert mth["weapon"] == pytest.approx(0.7)
    rep = E.evaluate(pred, ["weapon"], th, mth)
    r = rep["per_category"]["weapon"]
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 3)
    assert r["precision"] == pytest.approx(0.75) and r["recall"] == pytest.approx(0.75)
    assert r["ap"] == pytest.approx((1 + 1 + 0.75 + 4 / 7) / 4)
    assert r["roc_auc"] == pytest.approx(0.75)
    assert r["confusion_matrix"] == [[3, 1], [1, 3]]
    loc = r["localisation"]
    assert loc["n"] == 2
    assert loc["topk_iou"] == pytest.approx(0.5)  # image 0: top-2 = mask; image 1: top-1 = patch 2
    assert loc["pointing"] == pytest.approx(0.5)
    assert loc["iou"] == pytest.approx(0.5)  # at 0.7: image 0 -> {0,1} = 1; image 1 -> {2} -> 0
    assert loc["iou@0.5"] == pytest.approx(0.5)
    assert loc["negative_area"] == pytest.approx(0.0)  # no negative patch reaches 0.7
    row = summary_row("x", rep)
    assert row["f1"] == pytest.approx(0.75) and row["topk_iou"] == pytest.approx(0.5)
    brief = E.card_metrics(rep, rep, mth, "test")
    assert brief["test"]["weapon"]["f1"] == pytest.approx(0.75)
    json.dumps(brief)  # the card's metrics must be plain JSON (NaN becomes null)


def test_calibration_folds_the_map_threshold_into_the_bias(tiny_model, tmp_path: Path) -> None:
    model = copy.deepcopy(tiny_model)
    rows = load_rows(make_dataset(tmp_path / "ds", n=4), ["weapon"])
    cache = build_or_load(
        model.backbone, rows, ["weapon"], model.card.preprocess, model.grid, PLAIN, tmp_path / "c", "val"
    )
    before = E.predict_features(model, cache)
    served = calibrate_map_bias(model, {"weapon": 0.3})
    after = E.predict_features(model, cache)
    assert served == {"weapon": pytest.approx(0.5)}
    np.testing.assert_allclose(after.scores, before.scores)  # scores do not depend on the map bias
    np.testing.assert_array_equal(after.maps >= 0.5, before.maps >= 0.3)


def test_eval_cli_on_checkpoint_and_onnx_agree(tiny_model, tmp_path: Path, capsys) -> None:
    man = make_dataset(tmp_path / "ds", n=24)
    model = copy.deepcopy(tiny_model)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(model, ckpt, thresholds={"weapon": 0.4})
    from dangerclip.modeling.export import export_onnx

    onnx = export_onnx(model, tmp_path / "m.onnx")
    assert cli_main(["eval", str(ckpt), str(man), "--out", str(tmp_path / "ev")]) == 0
    torch_res = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", str(onnx), str(man)]) == 0
    onnx_res = json.loads(capsys.readouterr().out)
    assert torch_res["thresholds"] == {"weapon": 0.4}
    a = torch_res["metrics"]["per_category"]["weapon"]
    b = onnx_res["metrics"]["per_category"]["weapon"]
    assert a["n"] == b["n"] == 4  # the manifest's test split
    assert a["ap"] == pytest.approx(b["ap"], abs=1e-6) and a["confusion_matrix"] == b["confusion_matrix"]
    assert (tmp_path / "ev" / "eval.json").is_file() and (tmp_path / "ev" / "pr_curve.png").is_file()
    # --write-card chooses thresholds on val and stores them with the metrics.
    assert cli_main(["eval", str(ckpt), str(man), "--write-card"]) == 0
    res = json.loads(capsys.readouterr().out)
    card = load_checkpoint(ckpt).card
    assert card.thresholds["weapon"] == pytest.approx(res["thresholds"]["weapon"])
    assert "val" in card.metrics and "map_thresholds" in card.metrics


def test_feature_and_image_predictions_agree(tiny_model, tmp_path: Path) -> None:
    rows = load_rows(make_dataset(tmp_path / "ds", n=6), ["weapon"])
    cache = build_or_load(
        tiny_model.backbone,
        rows,
        ["weapon"],
        tiny_model.card.preprocess,
        tiny_model.grid,
        PLAIN,
        tmp_path / "c",
        "test",
    )
    pf = E.predict_features(tiny_model, cache)
    pi = E.predict_images(tiny_model, rows, ["weapon"])
    np.testing.assert_allclose(pf.scores, pi.scores, atol=3e-3)
    np.testing.assert_allclose(pf.maps, pi.maps, atol=3e-3)
    np.testing.assert_array_equal(pf.labels, pi.labels)
    np.testing.assert_allclose(pf.masks, pi.masks, atol=1e-3)
    assert pf.images == pi.images and load_image(pi.images[0]).size == (96, 80)
