"""The output folder: names by content hash and shard, the results log as a commit record, atomic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pseudomask.output import OutputDir, atomic_save_npy, atomic_save_png, shard_suffix, slug

SHA = "ab12cd34ef56ab78" + "0" * 48


def test_names_come_from_the_content_hash_and_the_shard(tmp_path: Path) -> None:
    assert slug("Kitchen Knife!") == "kitchen-knife" and slug("***") == "category"
    assert shard_suffix(None) == "" and shard_suffix((1, 4)) == ".shard-00002-of-00004"
    out = OutputDir(tmp_path / "o", shard=(1, 4))
    assert out.root.is_dir()
    assert out.results_path.name == "results.shard-00002-of-00004.jsonl"
    assert out.summary_path.name == "summary.shard-00002-of-00004.json"
    assert out.manifest_path.name == "manifest.shard-00002-of-00004.jsonl"
    assert out.rel(out.mask_path(SHA, "Kitchen Knife")) == "masks/ab/ab12cd34ef56ab78.kitchen-knife.png"
    assert out.rel(out.grid_path(SHA)) == "grids/ab/ab12cd34ef56ab78.npy"
    assert out.rel(out.qa_path(SHA)) == "qa/ab12cd34ef56ab78.png"
    assert OutputDir(tmp_path / "o").results_path.name == "results.jsonl"


def test_results_log_survives_a_torn_line_and_the_latest_record_wins(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.append_result({"sha256": "a", "status": "failed"})
    with open(out.results_path, "a") as f:
        f.write('{"sha256": "b", "sta')  # a crash in the middle of a write
    out.append_result({"sha256": "a", "status": "ok"})
    lines = out.results_path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2]) == {"sha256": "a", "status": "ok"}
    shard = OutputDir(tmp_path, shard=(0, 2))
    shard.append_result({"sha256": "c", "status": "no_box"})
    shard.append_result({"no": "hash"})  # not a result record: ignored
    assert [r["sha256"] for r in out.read_results()] == ["a", "a", "c"]
    assert {k: v["status"] for k, v in out.latest_results().items()} == {"a": "ok", "c": "no_box"}


def test_files_are_written_whole(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.write_json(out.summary_path, {"b": 1, "a": float("nan")})
    assert out.summary_path.read_text() == '{\n  "a": null,\n  "b": 1\n}\n'
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 255
    atomic_save_png(tmp_path / "m" / "x.png", Image.fromarray(mask, mode="L"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m" / "x.png")), mask)
    grid = np.random.default_rng(0).random((2, 3, 3)).astype(np.float32)
    atomic_save_npy(tmp_path / "g" / "x.npy", grid)
    assert np.array_equal(np.load(tmp_path / "g" / "x.npy"), grid)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["summary.json", "x.npy", "x.png"]
