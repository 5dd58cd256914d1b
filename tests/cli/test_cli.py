"""The command line, end to end, and the import boundary of the serving half."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dangerclip_cli.main import main


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dangerclip_cli", *args], capture_output=True, text=True, timeout=600)


def test_serving_half_imports_no_torch():
    code = (
        "import sys, dangerclip, dangerclip.runtime.scorer, dangerclip.runtime.preprocess, dangerclip.runtime.card, "
        "dangerclip.runtime.manifest, dangerclip.runtime.heatmap, dangerclip.runtime.score_cli\n"
        "bad = [m for m in ('torch', 'open_clip', 'torchvision', 'training') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "score" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def test_score_prints_a_line_per_file_and_survives_bad_ones(tiny_onnx_path, sample_images_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    heat = tmp_path / "heat"
    r = _run_cli("score", "--model", str(tiny_onnx_path), str(sample_images_dir), str(bad), "--heatmaps", str(heat))
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    n = len(list(sample_images_dir.iterdir()))
    assert len(lines) == n + 1
    errors = [x for x in lines if "error" in x]
    assert len(errors) == 1 and errors[0]["path"] == str(bad)
    assert errors[0]["reason"] in ("decode_error", "not_an_image")
    ok = [x for x in lines if "error" not in x]
    assert all(0 <= x["scores"]["weapon"] <= 1 and isinstance(x["flagged"]["weapon"], bool) for x in ok)
    assert all(Path(x["heatmaps"]["weapon"]).is_file() for x in ok)
    assert r.returncode == 1 and "could not be scored" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny", "demo", "ViT-B-16"])
def test_build_train_save_load_export_score(config, tmp_path, sample_images_dir):
    """The whole model life cycle through the public API and CLI, for each config (random weights)."""
    from dangerclip.modeling.checkpoint import load_checkpoint, save_checkpoint
    from dangerclip.modeling.factory import create_model
    from dangerclip.modeling.losses import danger_loss

    torch.set_num_threads(2)
    m = create_model(config, pretrained="random", seed=0)
    before = [p.detach().clone() for p in m.trainable_parameters()]
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    m.train()
    out = m(torch.randn(2, 3, 224, 224))
    n = out.map_logits.shape[-1]
    loss = danger_loss(
        out.logits,
        out.map_logits,
        torch.tensor([[1.0], [0.0]]),
        torch.rand(2, 1, n),
        torch.ones(2, 1, dtype=torch.bool),
    )["loss"]
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.trainable_parameters(), strict=True))
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(m.eval(), ckpt, version="test-1", trained=True, include_backbone=(config != "ViT-B-16"))
    m2 = load_checkpoint(ckpt)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(m.eval()(x).scores, m2(x).scores)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx_path)]) == 0
    r = _run_cli("score", "--model", str(onnx_path), str(sample_images_dir))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == len(list(sample_images_dir.iterdir()))
    assert all(x["model_version"] == "test-1" for x in lines)


def test_create_and_export_commands(tmp_path, capsys):
    ckpt = tmp_path / "zs.safetensors"
    assert main(["create", "--config", "tiny", "--mode", "zeroshot", "--out", str(ckpt)]) == 0
    card = json.loads(capsys.readouterr().out)["card"]
    assert card["mode"] == "zeroshot" and card["version"] == "0.0.0-zeroshot"
    out = tmp_path / "zs.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--int8"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fp32_vs_torch"]["score"] <= 1e-4 and Path(rep["int8"]["path"]).is_file()


def test_export_writes_a_static_int8_copy_checked_on_images_it_was_not_calibrated_on(tmp_path, capsys):
    from dangerclip.runtime.scorer import DangerScorer
    from dangerclip_cli.demo import synthetic_images

    ckpt, out, calib = tmp_path / "m.safetensors", tmp_path / "m.onnx", tmp_path / "calib"
    assert main(["create", "--config", "tiny", "--out", str(ckpt)]) == 0
    synthetic_images(calib, n=16, seed=3)
    capsys.readouterr()
    assert main(["export", str(ckpt), "--out", str(out), "--int8-static", "--calibration", str(calib)]) == 0
    rep = json.loads(capsys.readouterr().out)["int8_static"]  # stdout is the report alone
    assert rep["path"] == str(tmp_path / "m.int8-static.onnx") and 0.99 <= rep["decisions_unchanged"] <= 1
    meta = DangerScorer(rep["path"]).session.get_modelmeta().custom_metadata_map
    assert meta["dangerclip.precision"] == "int8-static-weights"
    assert json.loads(meta["dangerclip.export_check"])["deviation"]["images"] == 8  # the held-out half
