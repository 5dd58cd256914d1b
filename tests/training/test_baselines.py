"""Baselines: torchvision CNNs with a sigmoid head (local weights or random init), zero-shot CLIP rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_data import make_dataset

from dangerclip_cli.main import main as cli_main
from training import baselines as B
from training.data import assign_splits, load_rows


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rows = load_rows(make_dataset(tmp_path_factory.mktemp("ds"), n=24), ["weapon"])
    idx = assign_splits(rows)
    return {s: [rows[i] for i in idx[s]] for s in idx}


def test_build_cnn_heads_and_local_weights(tmp_path: Path) -> None:
    import torchvision

    # A local torchvision state dict (1000 classes) is loaded; only the last layer is replaced.
    ref = torchvision.models.resnet50(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    loaded = B.build_cnn("resnet50", 2, str(tmp_path / "r50.pth"))
    assert torch.equal(loaded.conv1.weight, ref.conv1.weight)
    assert loaded.fc.out_features == 2
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet50"):
        B.build_cnn("resnet50", 1, str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="choose one of"):
        B.build_cnn("alexnet", 1)


def test_vgg16_head_shape() -> None:
    m = B.build_cnn("vgg16", 1)
    assert m.classifier[6].out_features == 1
    with torch.no_grad():
        assert m.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


def test_resnet_fine_tunes_and_reports_a_row(splits) -> None:
    cfg = B.CNNConfig(arch="resnet50", image_size=32, batch_size=4, max_steps=2, lr=0.005)
    _, res = B.train_cnn(cfg, splits)
    assert res["steps"] == 2
    row = res["row"]
    assert row["model"] == "ResNet-50 (random init)"
    assert 0.0 <= row["f1"] <= 1.0 and 0.0 <= row["ap"] <= 1.0
    assert res["metrics"]["per_category"]["weapon"]["n"] == len(splits["test"])


def test_cli_zeroshot_row_with_a_training_run(tiny_model, splits, tmp_path: Path, capsys) -> None:
    man = make_dataset(tmp_path / "ds", n=24)
    run = tmp_path / "run"
    assert (
        cli_main(
            [
                "train",
                "--data",
                str(man),
                "--out",
                str(run),
                "--iterations",
                "4",
                "--batch-size",
                "6",
                "--color-views",
                "0",
                "--no-export",
                "--no-report",
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    before = sorted(p.name for p in (run / "cache").glob("test-*"))
    rc = cli_main(
        [
            "baselines",
            str(man),
            "--models",
            "zeroshot",
            "--out",
            str(tmp_path / "b"),
            "--cache-dir",
            str(run / "cache"),
            "--with-run",
            str(run),
        ]
    )
    assert rc == 0
    md = (tmp_path / "b" / "baselines.md").read_text()
    assert "| DangerCLIP tiny |" in md and "| zero-shot CLIP tiny (random init) |" in md
    rows = json.loads((tmp_path / "b" / "baselines.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["f1"] is not None for r in rows)
    # The zero-shot model has the trained run's backbone: its val/test features came from the same cache.
    assert sorted(p.name for p in (run / "cache").glob("test-*")) == before
