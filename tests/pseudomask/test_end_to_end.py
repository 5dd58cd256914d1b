"""The ``dangerclip pseudomask`` command end to end with real (tiny, random-weight) GroundingDINO and SAM
on generated image files: outputs per image, resume, failure recording and sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dangerclip.runtime.manifest import read_manifest
from dangerclip_cli.main import main

pytestmark = pytest.mark.slow


def tiny_args(bert_dir: Path) -> list[str]:
    return [
        "--random-weights",
        "--sam-model",
        "tiny",
        "--dino-config",
        "tiny",
        "--bert-dir",
        str(bert_dir),
        "--dino-size",
        "128",
        "--no-progress",
    ]


def lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_job_writes_every_output_resumes_and_records_bad_images(tmp_path, dataset, bert_dir, capsys):
    out = tmp_path / "out"
    argv = [
        "pseudomask",
        str(dataset),
        "--out",
        str(out),
        "--include-negatives",
        "--qa-samples",
        "2",
        "--batch-size",
        "2",
        *tiny_args(bert_dir),
    ]
    assert main(argv) == 0
    s = last_json(capsys.readouterr().out)
    assert (s["rows"], s["processed"], s["failed"], s["skipped_done"]) == (6, 5, 1, 0)
    assert s["processed"] == s["with_boxes"] + s["no_box"]

    recs = lines(out / "results.jsonl")
    assert len(recs) == 6
    (bad,) = [r for r in recs if r["status"] == "failed"]
    assert Path(bad["image"]).name == "broken.jpg" and bad["error"]["reason"] == "decode_error"
    for r in (r for r in recs if r["status"] != "failed"):
        w, h = Image.open(r["image"]).size
        info = r["prompts"]["weapon"]
        png = np.asarray(Image.open(out / info["mask"]))
        assert png.shape == (h, w) and set(np.unique(png)) <= {0, 255}
        assert info["area"] == int((png > 0).sum()) and len(info["boxes"]) == len(info["scores"]) == len(
            info["phrases"]
        )
        assert r["status"] == ("ok" if info["boxes"] else "no_box")
        grid = np.load(out / r["grid"])
        assert grid.shape == (1, 14, 14) and grid.dtype == np.float32 and 0 <= grid.min() <= grid.max() <= 1
        assert r["timings_ms"]["total"] > 0 and r["width"] == w and r["height"] == h
    assert len(list((out / "qa").glob("*.png"))) >= 2
    rows = read_manifest(out / "manifest.jsonl", ["weapon"])  # what training reads
    assert len(rows) == 5 and all(Path(p).is_file() for r in rows for p in r.masks.values())
    assert json.loads((out / "summary.json").read_text())["processed"] == 5

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(argv) == 0  # everything is done: no model is even built
    s2 = last_json(capsys.readouterr().out)
    assert (s2["processed"], s2["failed"], s2["skipped_done"]) == (0, 0, 6)
    assert len(lines(out / "results.jsonl")) == 6
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def test_shards_split_the_set_with_no_overlap_and_no_gap(tmp_path, bert_dir, capsys):
    from tests.support.pseudomask import make_dataset

    m = make_dataset(tmp_path / "d", n_pos=6, n_neg=0, corrupt=False)
    out = tmp_path / "out"
    for i in range(2):
        argv = ["pseudomask", str(m), "--out", str(out), "--shard", f"{i}/2", *tiny_args(bert_dir)]
        assert main(argv) == 0
    capsys.readouterr()
    shard_ids = [{r["id"] for r in lines(out / f"results.shard-{i:05d}-of-00002.jsonl")} for i in (1, 2)]
    all_ids = {r.id for r in read_manifest(m, ["weapon"])}
    assert shard_ids[0].isdisjoint(shard_ids[1]) and shard_ids[0] | shard_ids[1] == all_ids
    assert all(shard_ids)  # both shards got work
    for i in (1, 2):
        part = read_manifest(out / f"manifest.shard-{i:05d}-of-00002.jsonl", ["weapon"])
        assert {r.id for r in part} == shard_ids[i - 1]
    assert main(["pseudomask", str(m), "--out", str(out), "--collect"]) == 0
    assert last_json(capsys.readouterr().out)["rows"] == 6
    assert {r.id for r in read_manifest(out / "manifest.jsonl", ["weapon"])} == all_ids
