"""Checkpoints round-trip bit-identically; exports reproduce torch or are refused; the scorer reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dangerclip.modeling.backbone import BackboneError
from dangerclip.modeling.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from dangerclip.modeling.export import (
    CHECK_KEY,
    TOLERANCES,
    ExportError,
    check_images,
    export_fp16,
    export_int8,
    export_onnx,
    max_score_deviation,
)
from dangerclip.modeling.factory import create_model
from dangerclip.runtime.scorer import DangerScorer


def _train_one_step(model) -> None:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    from dangerclip.modeling.losses import danger_loss

    model.train()
    out = model(torch.randn(2, 3, 224, 224))
    k = out.logits.shape[1]
    loss = danger_loss(
        out.logits,
        out.map_logits,
        torch.ones(2, k),
        torch.rand(2, k, out.map_logits.shape[-1]),
        torch.ones(2, k, dtype=torch.bool),
    )["loss"]
    loss.backward()
    opt.step()
    model.eval()


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    m = create_model("tiny", prompts=["gun", "knife"], seed=4)
    _train_one_step(m)
    p = tmp_path / "m.safetensors"
    save_checkpoint(m, p, version="1.2.3", thresholds={"gun": 0.7}, metrics={"f1": 0.5}, trained=True)
    m2 = load_checkpoint(p)
    x = torch.randn(3, 3, 224, 224)
    a, b = m(x), m2(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)
    assert m2.card.version == "1.2.3" and m2.card.thresholds == {"gun": 0.7, "knife": 0.5}
    assert m2.card.metrics == {"f1": 0.5} and m2.card.trained
    meta, _ = read_checkpoint(p)
    card = json.loads(meta["dangerclip.card"])
    assert card["backbone"]["sha256"] == m.backbone.sha256
    assert card["preprocess"]["image_size"] == 224


def test_checkpoint_with_embedded_backbone(tmp_path):
    m = create_model("tiny", seed=11)
    p = tmp_path / "m.safetensors"
    save_checkpoint(m, p, include_backbone=True)
    m2 = load_checkpoint(p)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(m(x).scores, m2(x).scores)
    with pytest.raises(BackboneError, match="text tower"):
        m2.backbone.encode_text(["gun"])


def test_checkpoint_refuses_another_backbone(tmp_path):
    m = create_model("tiny", seed=0)
    p = tmp_path / "m.safetensors"
    save_checkpoint(m, p)
    other = create_model("tiny", seed=7)
    w = tmp_path / "other.pt"
    torch.save(other.backbone.clip.state_dict(), w)
    with pytest.raises(BackboneError, match="sha256"):
        load_checkpoint(p, pretrained=str(w))


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_export_matches_torch_and_carries_the_card(tiny_model, tiny_onnx_path):
    batch = check_images(tiny_model, n=5, seed=3)
    dev = max_score_deviation(tiny_model, tiny_onnx_path, batch)
    assert dev["score"] <= 1e-4 and dev["map"] <= 1e-4
    s = DangerScorer(tiny_onnx_path)
    assert s.card.to_dict() == tiny_model.card.to_dict()
    for b in (1, 5):  # dynamic batch
        scores, maps = s.predict(batch[:b])
        assert scores.shape == (b, 1) and maps.shape == (b, 1, 14, 14)


def test_export_refuses_a_graph_that_does_not_match(tiny_model, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(ExportError):
        export_onnx(tiny_model, out, tol=-1.0)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_zero_shot_model_exports(tmp_path):
    m = create_model("tiny", mode="zeroshot", seed=1)
    path = export_onnx(m, tmp_path / "zs.onnx")
    s = DangerScorer(path)
    assert s.card.mode == "zeroshot"


def test_fp16_and_int8_report_their_deviation(tiny_onnx_path, tiny_model, tmp_path):
    calib = check_images(tiny_model, n=4, seed=9)
    d16 = export_fp16(tiny_onnx_path, tmp_path / "m.fp16.onnx", calib)
    d8 = export_int8(tiny_onnx_path, tmp_path / "m.int8.onnx", calib)
    for d, precision in ((d16, "fp16"), (d8, "int8")):
        assert 0 < d["score_max"] <= TOLERANCES[precision]["score"] and d["map_max"] <= TOLERANCES[precision]["map"]
    for name, precision in (("m.fp16.onnx", "fp16"), ("m.int8.onnx", "int8")):
        s = DangerScorer(tmp_path / name)
        scores, _ = s.predict(calib)
        assert np.isfinite(scores).all()
        check = json.loads(s.session.get_modelmeta().custom_metadata_map[CHECK_KEY])
        assert check["precision"] == precision and check["tolerance"] == TOLERANCES[precision]
        dev = check["deviation"]
        assert dev["images"] == 4 and 0 <= dev["score"] <= dev["score_max"] and 0 <= dev["map"] <= dev["map_max"]


def test_the_copy_gate_reads_a_quantile_so_a_bigger_calibration_set_is_not_stricter(
    tiny_onnx_path, tiny_model, tmp_path, monkeypatch
):
    """One map cell in ten thousand and three images in 500 off by 0.5 (the tail a big calibration set always finds)
    pass the INT8 gate, the flipped decisions recorded; the same drift in one cell of fifty is refused, and so is a
    copy whose scores drift on 2 % of the images."""
    import dangerclip.modeling.export as ex

    calib = check_images(tiny_model, n=2, seed=9)
    rng = np.random.default_rng(0)
    ref_s, ref_m = rng.random((500, 1)).astype(np.float32), rng.random((500, 1, 14, 14)).astype(np.float32)

    def run(maps_off: int, scores_off: int, name: str) -> None:
        s, m = ref_s.copy(), ref_m.copy()
        m.reshape(-1)[rng.choice(m.size, maps_off, replace=False)] += 0.5
        s.reshape(-1)[:scores_off] += 0.5
        fake = {str(tiny_onnx_path): (ref_s, ref_m), str(tmp_path / name): (s, m)}
        monkeypatch.setattr(ex, "_ort_scores", lambda path, batch: fake[str(path)])
        export_int8(tiny_onnx_path, tmp_path / name, calib)

    cut = float(DangerScorer(tiny_onnx_path).thresholds[0])
    ref_s[:3] = cut - 0.1  # three images just under the threshold: their +0.5 drift flips them, inside the p99
    run(maps_off=ref_m.size // 10_000, scores_off=3, name="tail.onnx")
    check = json.loads(DangerScorer(tmp_path / "tail.onnx").session.get_modelmeta().custom_metadata_map[CHECK_KEY])
    assert check["deviation"]["map_max"] >= 0.5 and check["deviation"]["map"] < 0.1
    assert check["deviation"]["score_max"] > 0.49 and check["deviation"]["decisions_unchanged"] == 497 / 500
    with pytest.raises(ExportError, match="map .*99.9th percentile"):
        run(maps_off=ref_m.size // 50, scores_off=0, name="maps.onnx")
    with pytest.raises(ExportError, match="score .*99th percentile"):
        run(maps_off=0, scores_off=10, name="scores.onnx")
    assert not (tmp_path / "maps.onnx").exists() and not (tmp_path / "scores.onnx").exists()


def test_the_gate_refuses_a_copy_whose_maps_drift(tiny_onnx_path, tiny_model, tmp_path, monkeypatch):
    """Maps count as much as scores: a copy within the score tolerance but off in its maps is not written."""
    import dangerclip.modeling.export as ex

    calib = check_images(tiny_model, n=4, seed=9)
    monkeypatch.setitem(ex.TOLERANCES, "int8", {"score": 1.0, "map": 1e-6})
    with pytest.raises(ExportError, match="map"):
        export_int8(tiny_onnx_path, tmp_path / "m.int8.onnx", calib)
    assert not (tmp_path / "m.int8.onnx").exists()


def test_scorer_falls_back_to_cpu_and_applies_thresholds(tiny_onnx_path, tiny_model, caplog):
    s = DangerScorer(tiny_onnx_path, providers="auto", thresholds={"weapon": 0.0})
    assert s.provider == "CPUExecutionProvider"
    batch = check_images(tiny_model, n=2)
    scores, maps = s.predict(batch)
    assert s.flag(scores).all()
    preds = s.to_predictions(scores, maps)
    assert preds[0].flagged == {"weapon": True} and set(preds[0].map_summary()["weapon"]) == {"peak", "peak_at", "area"}
    with pytest.raises(ValueError, match="unknown categories"):
        DangerScorer(tiny_onnx_path, thresholds={"bomb": 0.3})
