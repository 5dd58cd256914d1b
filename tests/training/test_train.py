"""The training loop on the tiny model: it learns, resumes exactly, and writes a complete run folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import make_dataset

from dangerclip.modeling.checkpoint import load_checkpoint, read_checkpoint
from dangerclip.runtime.card import CARD_KEY
from dangerclip_cli.main import main as cli_main
from training.config import TrainConfig
from training.history import read_history
from training.optim import lr_factor
from training.sampler import BatchSampler
from training.train import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"), n=36)


def _cfg(dataset: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(dataset),
        out=str(out),
        cache_dir=str(cache),
        batch_size=6,
        iterations=24,
        lr=1e-3,
        warmup=3,
        color_views=1,
        log_every=2,
        eval_every=0,
        checkpoint_every=0,
        export=False,
        report=False,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_and_sampler_are_pure_functions_of_step() -> None:
    assert lr_factor(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)
    assert 0.01 < lr_factor(55, 100, 10, 0.01) < 1.0
    s = BatchSampler(np.arange(10), 4, 3, seed=1)
    first_epoch = np.concatenate([s(0)[0], s(1)[0], s(2)[0][:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))  # every row once per epoch
    again = BatchSampler(np.arange(10), 4, 3, seed=1)
    assert again(7)[0].tolist() == s(7)[0].tolist() and again(7)[1].tolist() == s(7)[1].tolist()
    assert s(7)[1].max() < 3


def test_loss_decreases_and_no_dense_ablation(tiny_model, dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = train(_cfg(dataset, tmp_path / "run", cache), model=copy.deepcopy(tiny_model))
    hist = [h for h in read_history(tmp_path / "run" / "metrics.jsonl") if h["split"] == "train"]
    assert res.steps == 24 and len(hist) == 12
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"], [h["loss"] for h in hist]
    assert hist[0]["focal"] > 0 and hist[0]["dice"] > 0
    assert res.checkpoint is not None and res.checkpoint.is_file()
    # The backbone was frozen: same weights, same hash.
    assert res.model.backbone.sha256 == tiny_model.backbone.sha256
    ab = train(_cfg(dataset, tmp_path / "nodense", cache, dense=False, iterations=4), model=copy.deepcopy(tiny_model))
    hist_ab = [h for h in read_history(tmp_path / "nodense" / "metrics.jsonl") if h["split"] == "train"]
    assert all(h["loss"] == pytest.approx(h["bce"]) for h in hist_ab)
    assert ab.metrics["val"]["n"] > 0


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_model, dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    full = train(_cfg(dataset, tmp_path / "full", cache, iterations=10), model=copy.deepcopy(tiny_model))
    part = train(_cfg(dataset, tmp_path / "part", cache, iterations=10, stop_after=4), model=copy.deepcopy(tiny_model))
    assert part.interrupted and part.steps == 4 and part.checkpoint is None
    assert (tmp_path / "part" / "checkpoints" / "step_000004.pt").is_file()
    # Resume in a fresh model (as a new process would); its head starts from other weights on purpose.
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.head.parameters():
            p.add_(1.0)
    resumed = train(_cfg(dataset, tmp_path / "part", cache, iterations=10, resume="auto"), model=other)
    assert resumed.steps == 10 and not resumed.interrupted
    a, b = full.model.head.state_dict(), resumed.model.head.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The metrics log continues where the checkpoint was, without duplicate steps.
    steps = [h["step"] for h in read_history(tmp_path / "part" / "metrics.jsonl") if h["split"] == "train"]
    assert steps == [2, 4, 6, 8, 10]
    # A resume with a config that changes the result is refused.
    with pytest.raises(ValueError, match="lr"):
        train(
            _cfg(dataset, tmp_path / "part", cache, iterations=12, lr=5e-4, resume="auto"),
            model=copy.deepcopy(tiny_model),
        )


def test_cli_run_writes_checkpoint_onnx_and_report(dataset: Path, tmp_path: Path, capsys) -> None:
    conf = tmp_path / "train.json"
    conf.write_text(
        json.dumps(
            {
                "data": str(dataset),
                "out": str(tmp_path / "run"),
                "iterations": 8,
                "batch_size": 6,
                "color_views": 0,
                "log_every": 2,
                "eval_every": 4,
                "checkpoint_every": 4,
                "threads": 1,
            }
        )
    )
    rc = cli_main(["train", str(conf), "--lr", "0.001", "--no-progress", "--warmup", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    run = tmp_path / "run"
    for name in (
        "model.safetensors",
        "model.onnx",
        "report.md",
        "eval.json",
        "metrics.jsonl",
        "config.json",
        "plots/pr_curve.png",
        "plots/loss_curves.png",
        "plots/danger_maps.png",
    ):
        assert (run / name).is_file(), name
    assert summary["steps"] == 8 and summary["test"]["f1"] is not None
    meta, _ = read_checkpoint(run / "model.safetensors")
    card = json.loads(meta[CARD_KEY])
    assert card["trained"] is True
    assert card["thresholds"]["weapon"] == pytest.approx(summary["thresholds"]["weapon"])
    assert set(card["metrics"]) >= {"val", "test", "map_thresholds"}
    assert "| DangerCLIP tiny |" in (run / "report.md").read_text()
    assert json.loads((run / "config.json").read_text())["lr"] == 0.001
    model = load_checkpoint(run / "model.safetensors")
    assert model.card.thresholds == card["thresholds"]
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 2


def test_two_categories_end_to_end(tiny_model, tmp_path: Path) -> None:
    from dangerclip.modeling.factory import create_model

    man = make_dataset(tmp_path / "ds", n=24, two_categories=True)
    model = create_model("tiny", prompts=["weapon", "disc"], seed=0)
    res = train(
        _cfg(man, tmp_path / "run", tmp_path / "cache", categories=["weapon", "disc"], iterations=4, report=True),
        model=model,
    )
    test = res.metrics["test"]
    assert set(test["per_category"]) == {"weapon", "disc"} and "any" in test
    # Discs have no masks: no localisation images for them, but the weapon's are measured.
    assert test["per_category"]["disc"]["localisation"]["n"] == 0
    assert test["per_category"]["weapon"]["localisation"]["n"] > 0
    assert set(res.thresholds) == {"weapon", "disc"}
    assert "| disc |" in (tmp_path / "run" / "report.md").read_text()


def test_tensorboard_is_optional(tiny_model, dataset: Path, tmp_path: Path) -> None:
    import importlib.util

    cfg = _cfg(dataset, tmp_path / "run", tmp_path / "cache", iterations=2, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            train(cfg, model=copy.deepcopy(tiny_model))
    else:
        train(cfg, model=copy.deepcopy(tiny_model))
        assert list((tmp_path / "run" / "tensorboard").glob("events.*"))


def test_config_files_and_validation(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text("")
    (tmp_path / "c.yaml").write_text("data: data/m.jsonl\nout: runs/x\niterations: 7\nloss_weights: [1, 0, 1]\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml")
    assert cfg.data == str(tmp_path / "data" / "m.jsonl") and cfg.out == str(tmp_path / "runs" / "x")
    assert cfg.iterations == 7 and cfg.loss_weights == (1.0, 0.0, 1.0) and cfg.pretrained == ""
    assert TrainConfig(data="x", dense=False).effective_loss_weights == (1.0, 0.0, 0.0)
    (tmp_path / "bad.json").write_text(json.dumps({"data": "x", "iterationz": 3}))
    with pytest.raises(ValueError, match="iterationz"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="batch_size must be >= 1.*amp must be one of"):
        TrainConfig(data="x", batch_size=0, amp="fp8").validate()


def test_cli_reports_bad_rows_before_training(tmp_path: Path, capsys) -> None:
    man = make_dataset(tmp_path / "ds", n=4)
    man.write_text(
        man.read_text()
        + json.dumps({"image": "gone.png", "label": 1})
        + "\n"
        + json.dumps({"image": "img_001.png", "label": 7})
        + "\n"
    )
    rc = cli_main(["train", "--data", str(man), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "2 bad row(s)" in err and "line 5: image file not found" in err and "line 6:" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_gives_back_the_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="data"):
        train(TrainConfig(data="", threads=1))
    assert torch.get_num_threads() == before
