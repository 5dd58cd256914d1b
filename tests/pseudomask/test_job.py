"""The job's mechanics with a stub detector: geometry end to end, degenerate detections, negatives and
label noise, resume and interruption, failures, sharding, model cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dangerclip.runtime.card import BackboneIdentity, ModelCard, PreprocessConfig
from dangerclip.runtime.manifest import read_manifest
from dangerclip.runtime.preprocess import mask_to_grid
from pseudomask.inputs import load_card, parse_shard, shard_of
from pseudomask.job import JobConfig, PseudoMaskJob
from pseudomask.segmenters import BoxSegmenter
from tests.support.pseudomask import StubDetector, make_dataset, make_image


def results(out: Path) -> list[dict]:
    """Every complete JSON line of every results file (a crash-truncated line is not one)."""
    recs = []
    for p in sorted(out.glob("results*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def one_image_manifest(root: Path, w: int = 448, h: int = 448, label: int = 1) -> Path:
    make_image(root / "a.png", w, h, 0)
    m = root / "m.jsonl"
    m.write_text(json.dumps({"image": "a.png", "label": label}) + "\n")
    return m


def test_known_box_gives_known_png_grid_and_training_row(tmp_path):
    m = one_image_manifest(tmp_path / "d")
    det = StubDetector({"weapon": ([[0, 0, 64, 96]], [0.9])})
    job = PseudoMaskJob(JobConfig(input=str(m), out=str(tmp_path / "out"), progress=False), det, BoxSegmenter())
    s = job.run()
    assert (s.processed, s.with_boxes, s.failed) == (1, 1, 0)
    (rec,) = results(tmp_path / "out")
    info = rec["prompts"]["weapon"]
    assert rec["status"] == "ok" and info["boxes"] == [[0, 0, 64, 96]] and info["scores"] == [0.9]
    assert info["area"] == 64 * 96 and info["area_fraction"] == pytest.approx(64 * 96 / 448**2, abs=1e-6)
    assert set(rec["timings_ms"]) == {"decode", "detect", "segment", "write", "total"}
    png = np.asarray(Image.open(tmp_path / "out" / info["mask"]))
    assert png.shape == (448, 448) and png.dtype == np.uint8
    assert (png[:96, :64] == 255).all() and png.sum() == 255 * 64 * 96
    grid = np.load(tmp_path / "out" / rec["grid"])
    assert grid.shape == (1, 14, 14) and rec["grid_shape"] == [1, 14, 14]
    np.testing.assert_allclose(grid[0], mask_to_grid(png, (14, 14), PreprocessConfig()), atol=1e-6)
    assert grid[0, :3, :2].min() > 0.98 and grid[0, 4:, :].max() == 0 and grid[0, :, 3:].max() == 0
    # The training manifest reads back with the shared reader and points at the PNG.
    (row,) = read_manifest(tmp_path / "out" / "manifest.jsonl", ["weapon"])
    assert row.labels == {"weapon": 1} and Path(row.masks["weapon"]) == tmp_path / "out" / info["mask"]


def test_sam_decodes_the_detected_box_on_one_embedding(tmp_path, monkeypatch):
    import torch

    from pseudomask.models import SamSegmenter, build_sam

    m = one_image_manifest(tmp_path / "d", w=300, h=200)
    seg = SamSegmenter(build_sam("tiny", None, random_weights=True), box_chunk=2)
    seen, encoder_calls = [], []
    orig_predict, orig_encoder = seg.predictor.predict_torch, seg.model.image_encoder.forward
    monkeypatch.setattr(
        seg.predictor, "predict_torch", lambda *a, **k: seen.append(k["boxes"].clone()) or orig_predict(*a, **k)
    )
    monkeypatch.setattr(seg.model.image_encoder, "forward", lambda x: encoder_calls.append(1) or orig_encoder(x))
    boxes = [[10, 20, 110, 120], [150, 30, 290, 190], [5, 5, 40, 40]]
    det = StubDetector({"weapon": (boxes, [0.9, 0.8, 0.7])})
    PseudoMaskJob(JobConfig(input=str(m), out=str(tmp_path / "out"), progress=False), det, seg).run()
    assert len(encoder_calls) == 1  # one embedding for all three boxes
    assert [len(b) for b in seen] == [2, 1]  # decoded in chunks of box_chunk
    expected = seg.predictor.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float32), (200, 300))
    torch.testing.assert_close(torch.cat(seen), expected)
    (rec,) = results(tmp_path / "out")
    png = np.asarray(Image.open(tmp_path / "out" / rec["prompts"]["weapon"]["mask"]))
    assert png.shape == (200, 300) and set(np.unique(png)) <= {0, 255}
    assert rec["prompts"]["weapon"]["area"] == int((png > 0).sum())


def test_degenerate_detections_all_boxes_and_no_boxes(tmp_path):
    m = make_dataset(tmp_path / "d", n_pos=2, n_neg=0, corrupt=False)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, (900, 2))
    many = np.concatenate([xy, xy + rng.uniform(2, 30, (900, 2))], 1)
    det = StubDetector({"weapon": (many, np.ones(900))})
    cfg = JobConfig(input=str(m), out=str(tmp_path / "all"), max_boxes=7, progress=False)
    PseudoMaskJob(cfg, det, BoxSegmenter()).run()
    for rec in results(tmp_path / "all"):
        assert len(rec["prompts"]["weapon"]["boxes"]) == 7

    class Spy(BoxSegmenter):
        embedded = 0

        def embed(self, images):
            Spy.embedded += len(images)
            return super().embed(images)

    det = StubDetector({"weapon": (many[:5], np.full(5, 0.2))})  # all below the 0.35 threshold
    s = PseudoMaskJob(JobConfig(input=str(m), out=str(tmp_path / "none"), progress=False), det, Spy()).run()
    assert (s.processed, s.no_box, s.with_boxes) == (2, 2, 0)
    assert Spy.embedded == 0  # no box, no segmenter work
    for rec in results(tmp_path / "none"):
        assert rec["status"] == "no_box" and rec["prompts"]["weapon"]["boxes"] == []
        assert np.asarray(Image.open(tmp_path / "none" / rec["prompts"]["weapon"]["mask"])).max() == 0
    rows = read_manifest(tmp_path / "none" / "manifest.jsonl", ["weapon"])
    assert len(rows) == 2 and all(not r.masks for r in rows)  # a positive without a box has no known mask


def test_negatives_skipped_by_default_and_label_noise_reported(tmp_path):
    m = make_dataset(tmp_path / "d", n_pos=1, n_neg=2, corrupt=False)
    det = StubDetector({"weapon": ([[1, 1, 30, 30]], [0.8])})
    s = PseudoMaskJob(JobConfig(input=str(m), out=str(tmp_path / "a"), progress=False), det, BoxSegmenter()).run()
    assert (s.processed, s.skipped_negative, s.suspects) == (1, 2, 0)
    rows = read_manifest(tmp_path / "a" / "manifest.jsonl", ["weapon"])
    assert len(rows) == 3 and sum(bool(r.masks) for r in rows) == 1  # negatives kept, without masks

    cfg = JobConfig(input=str(m), out=str(tmp_path / "b"), include_negatives=True, progress=False)
    s = PseudoMaskJob(cfg, det, BoxSegmenter()).run()
    assert (s.processed, s.skipped_negative, s.suspects) == (3, 0, 2)
    sus = [r for r in results(tmp_path / "b") if "suspect" in r]
    assert len(sus) == 2 and all(r["labels"] == {"weapon": 0} for r in sus)
    assert sus[0]["suspect"] == [{"category": "weapon", "score": 0.8}]
    assert all((tmp_path / "b" / r["qa"]).is_file() for r in sus)  # suspects always get a QA overlay
    rows = read_manifest(tmp_path / "b" / "manifest.jsonl", ["weapon"])
    assert sum(bool(r.masks) for r in rows) == 1  # a negative label is never given the detector's mask

    quiet = StubDetector({"weapon": ([[1, 1, 30, 30]], [0.45])})  # a box, but not a confident one
    cfg = JobConfig(input=str(m), out=str(tmp_path / "c"), include_negatives=True, progress=False)
    assert PseudoMaskJob(cfg, quiet, BoxSegmenter()).run().suspects == 0


def test_interrupt_then_resume_then_nothing_to_do(tmp_path, monkeypatch):
    m = make_dataset(tmp_path / "d", n_pos=4, n_neg=0, corrupt=False)
    out = tmp_path / "out"
    cfg = JobConfig(input=str(m), out=str(out), progress=False)
    boxes = {"weapon": ([[2, 2, 40, 30]], [0.9])}
    s1 = PseudoMaskJob(cfg, StubDetector(boxes, fail_on=[3]), BoxSegmenter()).run()
    assert s1.interrupted and s1.processed == 2
    # A crash mid-write leaves a partial line; the next run must still read and extend the log.
    with open(out / "results.jsonl", "a") as f:
        f.write('{"sha256": "abc", "stat')
    det2 = StubDetector(boxes)
    s2 = PseudoMaskJob(cfg, det2, BoxSegmenter()).run()
    assert (s2.skipped_done, s2.processed, det2.calls) == (2, 2, 2)
    det3 = StubDetector(boxes)
    reads = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real_read(self))
    s3 = PseudoMaskJob(cfg, det3, BoxSegmenter()).run()
    monkeypatch.undo()
    assert (s3.skipped_done, s3.processed, det3.calls) == (4, 0, 0)
    assert not [n for n in reads if n.startswith("pos_")]  # unchanged files are not even read
    assert len({r["sha256"] for r in results(out)}) == 4
    assert (
        sum(1 for line in (out / "results.jsonl").read_text().splitlines() if line.startswith('{"sha256": "abc"')) == 1
    )
    # A file changed in place is hashed again and redone; its unchanged neighbours are not read.
    changed = Path(read_manifest(m, ["weapon"])[0].image)
    make_image(changed, 64, 64, 99)
    det5 = StubDetector(boxes)
    s5 = PseudoMaskJob(cfg, det5, BoxSegmenter()).run()
    assert (s5.skipped_done, s5.processed) == (3, 1)
    # Changed settings make finished work stale: it is done again.
    cfg2 = JobConfig(input=str(m), out=str(out), box_threshold=0.5, progress=False)
    det4 = StubDetector(boxes)
    assert PseudoMaskJob(cfg2, det4, BoxSegmenter()).run().processed == 4


def test_bad_images_are_recorded_and_the_rest_finish(tmp_path):
    m = make_dataset(tmp_path / "d", n_pos=2, n_neg=0, corrupt=True)
    big = make_image(tmp_path / "d" / "img" / "big.png", 400, 300, 7)
    with open(m, "a") as f:
        f.write(json.dumps({"image": str(big), "label": 1}) + "\n")
        f.write(json.dumps({"image": "img/missing.png", "label": 1}) + "\n")
    # A missing file fails the strict manifest read; the job reports it rather than starting.
    with pytest.raises(ValueError, match="not found"):
        PseudoMaskJob(
            JobConfig(input=str(m), out=str(tmp_path / "o"), progress=False), StubDetector({}), BoxSegmenter()
        ).run()
    cfg = JobConfig(input=str(m), out=str(tmp_path / "o"), max_pixels=100_000, skip_bad_rows=True, progress=False)
    det = StubDetector({"weapon": ([[0, 0, 20, 20]], [0.9])})
    s = PseudoMaskJob(cfg, det, BoxSegmenter()).run()
    assert (s.processed, s.failed) == (2, 2)
    assert s.failures == {"decode_error": 1, "too_many_pixels": 1}
    failed = {Path(r["image"]).name: r["error"]["reason"] for r in results(tmp_path / "o") if r["status"] == "failed"}
    assert failed == {"broken.jpg": "decode_error", "big.png": "too_many_pixels"}
    rows = read_manifest(tmp_path / "o" / "manifest.jsonl", ["weapon"])
    assert sorted(Path(r.image).name for r in rows) == ["pos_0.jpg", "pos_1.png"]  # failed ones left out
    # A re-run does not retry bad images unless asked.
    assert PseudoMaskJob(cfg, det, BoxSegmenter()).run().failed == 0
    cfg.retry_failed = True
    assert PseudoMaskJob(cfg, det, BoxSegmenter()).run().failed == 2


def test_shards_partition_rows_without_overlap_or_gap():
    ids = [f"img/{i:05d}.jpg" for i in range(3000)]
    for n in (1, 2, 3, 7):
        parts = [{x for x in ids if shard_of(x, n) == i} for i in range(n)]
        assert sum(len(p) for p in parts) == len(ids) and set().union(*parts) == set(ids)
        assert min(len(p) for p in parts) > len(ids) / n * 0.85  # roughly balanced
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _card(image_size: int, grid: tuple[int, int]) -> ModelCard:
    return ModelCard(
        name="tiny",
        version="t1",
        mode="trained",
        prompts=["knife", "gun"],
        thresholds={},
        preprocess=PreprocessConfig(image_size=image_size),
        backbone=BackboneIdentity("tiny", "", "0" * 64),
        grid=grid,
    )


def test_model_card_sets_prompts_preprocessing_and_grid(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    card = _card(112, (7, 7))
    cj = tmp_path / "card.json"
    cj.write_text(card.to_json())
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["scores"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"dangerclip.card": card.to_json()})
    onnx.save(model, tmp_path / "m.onnx")
    assert load_card(tmp_path / "m.onnx") == load_card(cj) == card

    make_image(tmp_path / "d" / "x.png", 112, 112, 1)
    m = tmp_path / "d" / "m.jsonl"
    m.write_text(json.dumps({"image": "x.png", "label": "knife"}) + "\n")
    det = StubDetector({"knife": ([[0, 0, 16, 16]], [0.9]), "gun": ([[96, 96, 112, 112]], [0.9])})
    job = PseudoMaskJob(
        JobConfig(input=str(m), out=str(tmp_path / "o"), model=str(tmp_path / "m.onnx"), progress=False),
        det,
        BoxSegmenter(),
    )
    assert job.categories == ["knife", "gun"]
    job.run()
    (rec,) = results(tmp_path / "o")
    grid = np.load(tmp_path / "o" / rec["grid"])
    assert grid.shape == (2, 7, 7)  # one mask per prompt, on the card's grid
    assert grid[0, 0, 0] == pytest.approx(1.0) and grid[0].sum() == pytest.approx(1.0, abs=1e-3)
    assert grid[1, 6, 6] == pytest.approx(1.0) and grid[1].sum() == pytest.approx(1.0, abs=1e-3)
    (row,) = read_manifest(tmp_path / "o" / "manifest.jsonl", ["knife", "gun"])
    assert set(row.masks) == {"knife"}  # only the positive category gets its mask
    with pytest.raises(ValueError, match="no DangerCLIP model card"):
        onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
        load_card(tmp_path / "plain.onnx")


def test_progress_without_a_terminal_logs_rate_and_eta(caplog):
    import logging

    from dangerclip.runtime.progress import progress

    p = progress(10, desc="pseudomask", unit="images", enabled=False, period_s=0.0)
    with caplog.at_level(logging.INFO, logger="dangerclip.runtime.progress"):
        p.update(4)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith("pseudomask: 4/10 images,") and "images/s, ETA" in msg
