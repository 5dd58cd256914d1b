"""The demo-model builder: a CI-sized run end to end, its outputs load, its stages are cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.demo_model import DemoConfig, build


@pytest.fixture(scope="module")
def ci_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoConfig, dict]:
    root = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig.ci(str(root / "work"), str(root / "assets"))
    cfg.head.threads = 0
    return cfg, build(cfg)


@pytest.mark.slow
def test_ci_build_writes_a_loadable_onnx_model(ci_build: tuple[DemoConfig, dict]) -> None:
    from dangerclip.runtime.preprocess import load_image
    from dangerclip.runtime.scorer import DangerScorer

    cfg, report = ci_build
    assets = Path(cfg.assets)
    scorer = DangerScorer(str(assets / "model.onnx"))
    assert scorer.categories == ["weapon"]
    assert scorer.card.version == "0.0.0-ci" and scorer.card.trained
    # The card names no path on the build machine: the vision tower travels in the checkpoint.
    assert scorer.card.backbone.pretrained.startswith("synthetic-contrastive:")
    images = sorted((Path(cfg.work) / "data" / "head" / "images").iterdir())[:3]
    preds = scorer.score_images([load_image(p) for p in images])
    assert len(preds) == 3
    assert all(0.0 <= p.scores["weapon"] <= 1.0 for p in preds)
    assert preds[0].map.shape == (1, 14, 14)
    assert report["thresholds"]["weapon"] == pytest.approx(scorer.thresholds[0])


@pytest.mark.slow
def test_ci_build_checkpoint_stands_alone_and_matches_onnx(ci_build: tuple[DemoConfig, dict]) -> None:
    import torch

    from dangerclip.modeling.checkpoint import load_checkpoint
    from dangerclip.runtime.scorer import DangerScorer

    cfg, _ = ci_build
    model = load_checkpoint(Path(cfg.assets) / "model.safetensors")  # no pretrained= needed
    scorer = DangerScorer(str(Path(cfg.assets) / "model.onnx"))
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).scores.numpy()
    scores, _ = scorer.predict(x)
    np.testing.assert_allclose(scores, ref, atol=1e-4)


@pytest.mark.slow
def test_ci_build_reports_every_figure(ci_build: tuple[DemoConfig, dict]) -> None:
    cfg, report = ci_build
    for key in ("dense", "no_dense"):
        for fig in ("f1", "ap", "topk_iou", "pointing", "iou@threshold"):
            assert fig in report[key]
    assert 0.0 <= report["pretrain"]["probe_before"]["auroc"] <= 1.0
    assert 0.0 <= report["pretrain"]["probe_after"]["auroc"] <= 1.0
    md = (Path(cfg.assets) / "report.md").read_text()
    assert "no-dense ablation" in md and "linear-probe AUROC" in md
    saved = json.loads((Path(cfg.assets) / "report.json").read_text())
    assert saved["files"]["model.onnx"]["bytes"] < 8_000_000


@pytest.mark.slow
def test_second_build_reuses_every_stage(ci_build: tuple[DemoConfig, dict], caplog: pytest.LogCaptureFixture) -> None:
    cfg, first = ci_build
    stamp = (Path(cfg.work) / "backbone" / "clip.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO")
    second = build(cfg)
    assert (Path(cfg.work) / "backbone" / "clip.safetensors").stat().st_mtime_ns == stamp
    text = caplog.text
    assert "pretrain: reusing" in text and "train (dense): reusing" in text and "synth: reusing" in text
    # the model the second build replaced (the first one) was evaluated on the same split: the "before" row
    before = second["before"]
    assert before["sha256"] == first["files"]["model.onnx"]["sha256"] and before["n"] == first["dense"]["n"]
    assert before["f1"] == pytest.approx(first["dense"]["f1"], abs=0.02)  # onnxruntime on images vs the head run
    assert set(before["by_size"]) == {"small", "medium", "large"}
    assert "the model this build replaced" in (Path(cfg.assets) / "report.md").read_text()


@pytest.mark.slow
def test_editing_the_model_config_retrains_the_head(
    ci_build: tuple[DemoConfig, dict], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from training.demo_model import stages

    cfg, _ = ci_build
    real = stages.model_config

    def edited(name: str) -> dict:
        c = real(name)
        c["head"]["layers"] = 1
        return c

    monkeypatch.setattr(stages, "model_config", edited)
    caplog.set_level("INFO")
    other = dataclasses.replace(cfg, assets=str(Path(cfg.assets).parent / "assets-edited"), ablation=False)
    build(other)
    assert "train (dense): reusing" not in caplog.text and "synth: reusing" in caplog.text


def test_same_seed_for_both_sets_is_refused(tmp_path: Path) -> None:
    cfg = DemoConfig.ci(str(tmp_path / "w"), str(tmp_path / "a"))
    cfg.pretrain_seed = cfg.head_seed
    with pytest.raises(ValueError, match="must differ"):
        cfg.validate()
    cfg = DemoConfig.ci(str(tmp_path / "w"), str(tmp_path / "a"))
    cfg.pretrain_grayscale = 1.2
    with pytest.raises(ValueError, match="probabilities"):
        cfg.validate()


ASSETS = Path(__file__).resolve().parents[2] / "dangerclip" / "assets"


def test_committed_demo_model_scores_the_committed_samples() -> None:
    from dangerclip.runtime.preprocess import load_image
    from dangerclip.runtime.scorer import DangerScorer

    onnx_path = ASSETS / "demo" / "model.onnx"
    if not onnx_path.is_file():
        pytest.skip("no committed demo model")
    scorer = DangerScorer(str(onnx_path))
    assert scorer.card.trained and scorer.categories == ["weapon"]
    report = json.loads((ASSETS / "demo" / "report.json").read_text())
    assert report["files"]["model.onnx"]["bytes"] == onnx_path.stat().st_size
    rows = [json.loads(line) for line in (ASSETS / "samples" / "manifest.jsonl").read_text().splitlines()]
    preds = scorer.score_images([load_image(ASSETS / "samples" / r["image"]) for r in rows])
    assert len(preds) == 16
    for p in preds:
        assert 0.0 <= p.scores["weapon"] <= 1.0 and p.map.shape == (1, 14, 14)
        assert np.isfinite(p.map).all()


def test_committed_backbone_loads_into_the_demo_config_and_says_how_it_was_made() -> None:
    from safetensors import safe_open

    from training import pretrain as pt
    from training.demo_model import DEMO_BACKBONE, DemoConfig

    if not DEMO_BACKBONE.is_file():
        pytest.skip("no committed backbone")
    from dangerclip.modeling.backbone import state_dict_sha256
    from dangerclip.runtime.scorer import DangerScorer

    clip = pt.load_clip(DEMO_BACKBONE, "demo")  # strict: every key and shape
    # It is the backbone the committed demo model was trained on (the card records its vision tower's hash).
    card = DangerScorer(str(ASSETS / "demo" / "model.onnx")).card
    assert state_dict_sha256(clip.visual) == card.backbone.sha256
    with safe_open(str(DEMO_BACKBONE), "pt") as f:
        made = json.loads(f.metadata()["dangerclip.pretrain"])
    recipe = made["recipe"]
    d = DemoConfig()
    # The defaults of the command redo exactly this recipe (on a GPU: --backbone none --pretrain-device cuda).
    expect = {k: v for k, v in d.pretrain.__dict__.items() if k != "device"}
    assert {k: v for k, v in recipe["pretrain"].items() if k != "device"} == expect
    assert recipe["data"]["n"] == d.n_pretrain and recipe["data"]["seed"] == d.pretrain_seed
    assert recipe["data"].get("grayscale", 0.0) == d.pretrain_grayscale
    assert made["train"]["steps"] == d.pretrain.steps


@pytest.mark.slow
def test_committed_demo_model_reproduces_its_reported_f1_and_localisation() -> None:
    """The report's test-split F1 and pointing game, recomputed: images redrawn, JPEG-encoded, scored by onnxruntime."""
    from dangerclip.runtime.preprocess import decode_image, mask_to_grid
    from dangerclip.runtime.scorer import DangerScorer
    from training.metrics import pointing_hit
    from training.synth import SynthConfig, jpeg_bytes, redraw_split

    onnx_path = ASSETS / "demo" / "model.onnx"
    report = json.loads((ASSETS / "demo" / "report.json").read_text())
    if not onnx_path.is_file() or report["config"].get("model") != "demo":
        pytest.skip("no committed demo model of the demo config")
    cfg = report["config"]
    sc = SynthConfig(n=cfg["n_head"], seed=cfg["head_seed"], categories=cfg["categories"])
    test = redraw_split(sc, "test")
    images = [decode_image(jpeg_bytes(s.image)) for s in test]  # as training.synth.generate writes the set
    labels = [s.labels["weapon"] for s in test]
    masks = [s.masks["weapon"] for s in test]
    scorer = DangerScorer(str(onnx_path))
    preds = scorer.score_images(images, batch_size=16)
    flagged = np.array([p.flagged["weapon"] for p in preds])
    y = np.array(labels, bool)
    tp = int((flagged & y).sum())
    f1 = 2 * tp / (int(flagged.sum()) + int(y.sum()))
    assert len(test) == report["dense"]["n"]
    # A few images near the threshold may flip between torch (the report) and onnxruntime.
    assert f1 == pytest.approx(report["dense"]["f1"], abs=0.01)
    # Flagging every image would give 2p / (1 + p) ~ 0.67 at this positive share; the bar is 0.9.
    assert f1 >= 0.9
    # Localisation: the map's peak lies on the weapon (the report's pointing game), from onnxruntime's maps.
    hits = [
        pointing_hit(p.map[0], mask_to_grid(m, p.map.shape[1:], scorer.card.preprocess))
        for p, m, lab in zip(preds, masks, labels, strict=True)
        if lab and m.any()
    ]
    assert np.mean(hits) == pytest.approx(report["dense"]["pointing"], abs=0.01)
    # ... and the dense losses are what make it so (the paper's Table 3, on exact masks).
    assert report["dense"]["pointing"] > report["no_dense"]["pointing"]
    assert report["dense"]["topk_iou"] > report["no_dense"]["topk_iou"] + 0.1


def test_command_line_options_reach_the_recipes() -> None:
    import argparse

    from dangerclip.runtime.commandline import command_line
    from training.demo_model import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = (
        "--ci --work w --categories gun,knife --backbone none --pretrain-steps 7 --pretrain-device cpu"
        " --global-words --iterations 400 --color-views 2 --grayscale 0.3 --threads 1 --seed 5 --no-ablation"
    ).split()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    assert (cfg.work, cfg.categories, cfg.backbone, cfg.ablation) == ("w", ["gun", "knife"], "", False)
    pre, head = cfg.pretrain, cfg.head
    assert (pre.steps, pre.device, pre.global_words, pre.seed) == (7, "cpu", True, 5)
    assert (head.iterations, head.warmup, head.color_views, head.grayscale) == (400, 20, 2, 0.3)
    assert (head.threads, head.seed) == (1, 5)
    assert cfg.n_head == DemoConfig.ci("w", "a").n_head  # --ci sizes stand where no option overrides them
    assert config_from_args(parser.parse_args([])) == DemoConfig()
    # The report records the command as given, whoever called run().
    assert command_line("dangerclip demo-model", add_arguments, args) == (
        "dangerclip demo-model --work w --categories gun,knife --backbone none --no-ablation --pretrain-steps 7"
        " --pretrain-global-words --pretrain-device cpu --iterations 400 --color-views 2 --grayscale 0.3"
        " --threads 1 --seed 5 --ci"
    )
