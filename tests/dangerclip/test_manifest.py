"""Manifests: every bad row is reported with its line number; folders convert; writing round-trips."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dangerclip.runtime.manifest import ManifestError, manifest_from_folder, read_manifest, write_manifest


@pytest.fixture()
def images(tmp_path):
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / name)
    Image.new("L", (20, 20)).save(tmp_path / "m.png")
    (tmp_path / "notimage.jpg").write_bytes(b"text, not jpeg")
    return tmp_path


def test_all_bad_rows_are_listed_with_line_numbers(images):
    lines = [
        {"image": "a.jpg", "label": 1, "mask": "m.png", "split": "train"},
        {"image": "missing.jpg", "label": 0},
        "this is not json",
        {"image": "b.png", "label": "bazooka"},
        {"image": "notimage.jpg", "label": 0},
        {"image": "b.png", "label": 0, "split": "holdout"},
        {"image": "b.png"},
        {"image": "b.png", "label": "negative", "split": "val"},
    ]
    p = images / "m.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(p, ["weapon"])
    bad = {i.line: i.message for i in e.value.issues}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7]
    assert "not found" in bad[2] and "JSON" in bad[3] and "bazooka" in bad[4]
    assert "unreadable" in bad[5] and "split" in bad[6] and "label" in bad[7]
    assert "line 4" in str(e.value)
    rows = read_manifest(p, ["weapon"], skip_bad=True)
    assert [r.line for r in rows] == [1, 8]
    assert rows[0].labels == {"weapon": 1} and rows[0].masks["weapon"].endswith("m.png")
    assert rows[1].labels == {"weapon": 0} and rows[1].split == "val"


def test_csv_and_multi_category_labels(images):
    p = images / "m.csv"
    p.write_text("image,label,split\na.jpg,gun;knife,train\nb.png,negative,test\n")
    rows = read_manifest(p, ["gun", "knife", "explosive"])
    assert rows[0].labels == {"gun": 1, "knife": 1, "explosive": 0}
    assert not rows[1].positive and rows[1].split == "test"


def test_folder_layout_and_round_trip(tmp_path):
    for cat, n in (("gun", 2), ("knife", 1), ("negative", 2)):
        (tmp_path / "data" / cat).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / cat / f"{i}.jpg")
    rows = manifest_from_folder(tmp_path / "data")
    assert len(rows) == 5
    assert sum(r.labels["gun"] for r in rows) == 2 and sum(r.positive for r in rows) == 3
    out = tmp_path / "data" / "manifest.jsonl"
    write_manifest(rows, out)
    again = read_manifest(out, ["gun", "knife"])
    assert [(r.image, r.labels) for r in again] == [(r.image, r.labels) for r in rows]
