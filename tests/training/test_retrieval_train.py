"""The layouts users bring (Firearm 14k's release, a folder per class) read into one retrieval set; ``dangerclip
retrieval train`` end to end on one of them: resumable, a per-query report, a grid, and an exported embedder whose
onnxruntime embeddings are torch's and whose card carries a calibrated match distance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.firearms.readers import read_class_folders, read_firearm14k, read_retrieval_set


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)


def _firearm14k(root: Path, per_class: int = 5) -> Path:
    """Firearm 14k's released layout: train/<class>/, and val/, test/ with database_image/ and query_info/."""
    n = 0
    for c in ("ak", "glock", "m4"):
        for i in range(per_class):
            n += 1
            _image(root / "train" / c / f"{c}_{i}.jpg", n)
    for split, classes in (("val", ("p226", "mp5")), ("test", ("remington", "usp", "uzi"))):
        base = root / split
        truth = {}
        for c in classes:
            names = []
            for i in range(per_class):
                n += 1
                name = f"{c}_{i}.jpg"
                if i < 2:
                    _image(base / "query_info" / "query_image" / name, n)
                else:
                    _image(base / "database_image" / name, n)
                    names.append(name)
            truth.update({f"{c}_{i}.jpg": names for i in range(2)})
        _image(base / "database_image" / "distractor.jpg", 999)  # no query is about it
        (base / "query_info" / "ground_truth_info.json").write_text(json.dumps(truth))
    return root


def test_firearm14k_classes_come_from_the_ground_truth_and_distractors_stay_in_the_database(tmp_path):
    rs = read_retrieval_set(_firearm14k(tmp_path / "f14k"))
    assert rs.layout == "Firearm 14k"
    assert rs.classes["train"] == ["ak", "glock", "m4"] and all(len(rs.images[c]) == 5 for c in rs.classes["train"])
    real = [c for c in rs.classes["test"] if "distractor" not in c]
    assert len(real) == 3 and len(rs.classes["test"]) == 4
    for c in real:  # two queries, then the three database images their ground truth names: one model each
        stems = {p.stem.rsplit("_", 1)[0] for p in rs.images[c]}
        assert len(stems) == 1 and rs.queries[c] == [0, 1]
        assert [p.parent.name for p in rs.images[c]] == ["query_image"] * 2 + ["database_image"] * 3
    (d,) = [c for c in rs.classes["test"] if "distractor" in c]
    assert rs.queries.get(d, []) == [] and rs.images[d][0].name == "distractor.jpg"
    assert rs.counts()["val"] == {"classes": 3, "images": 11, "queries": 4}


def test_firearm14k_with_broken_ground_truth_is_refused_with_the_file_named(tmp_path):
    root = _firearm14k(tmp_path / "f14k")
    gt = root / "test" / "query_info" / "ground_truth_info.json"
    truth = json.loads(gt.read_text())
    truth["uzi_0.jpg"] = [*truth["uzi_0.jpg"], "nowhere.jpg"]
    gt.write_text(json.dumps(truth))
    with pytest.raises(ValueError, match="nowhere.jpg"):
        read_firearm14k(root)
    del truth["uzi_0.jpg"]
    gt.write_text(json.dumps(truth))
    with pytest.raises(ValueError, match="uzi_0.jpg: no entry"):
        read_firearm14k(root)


def test_a_folder_per_class_splits_classes_whole_with_two_queries_each(tmp_path):
    root = tmp_path / "folders"
    for k in range(10):
        for i in range(2 if k == 9 else 5):  # one class too small to evaluate on: it only trains
            _image(root / f"model{k}" / f"{i}.png", k * 10 + i)
    rs = read_retrieval_set(root, seed=3)
    assert rs.layout == "folder per class"
    split_of = {c: s for s, cs in rs.classes.items() for c in cs}
    assert len(split_of) == 10 and sum(len(cs) for cs in rs.classes.values()) == 10  # disjoint, all placed
    assert split_of["model9"] == "train" and rs.classes["val"] and rs.classes["test"]
    assert all(len(rs.queries[c]) == 2 and len(set(rs.queries[c])) == 2 for c in rs.classes["val"] + rs.classes["test"])
    assert read_class_folders(root, seed=3).classes == rs.classes  # the seed decides the split
    assert read_class_folders(root, seed=4).classes != rs.classes
    with pytest.raises(ValueError, match="not a retrieval set"):
        read_retrieval_set(root / "model0")
    with pytest.raises(ValueError, match="need at least 4 classes"):
        read_class_folders(_few(tmp_path))


def _few(tmp_path: Path) -> Path:
    root = tmp_path / "few"
    for k in range(3):
        for i in range(4):
            _image(root / f"c{k}" / f"{i}.jpg", 500 + k * 10 + i)
    return root


@pytest.mark.slow
def test_retrieval_train_resumes_reports_and_exports_an_embedder_the_serving_half_runs(tmp_path, capsys):
    import torch

    from dangerclip.runtime.embedder import Embedder
    from dangerclip_cli.main import main
    from training.retrieval.train import RetrievalConfig, embed_all, load_data, new_net

    data = tmp_path / "fa"
    assert main(["firearms", str(data), "--per-family", "3", "--images-per-model", "8", "--size", "64"]) == 0
    out = tmp_path / "run"
    base = ["retrieval", "train", "--data", str(data), "--out", str(out)]
    base += ["--image-size", "48", "--pairs-per-class", "4"]
    assert main([*base, "--cls-epochs", "1", "--pair-epochs", "1"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in first["stage2"]["history"]] == [1]
    # a longer run in the same folder resumes after stage 2's first epoch instead of starting over
    assert main([*base, "--cls-epochs", "1", "--pair-epochs", "2"]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in second["stage2"]["history"]] == [1, 2]
    assert second["stage2"]["history"][0] == first["stage2"]["history"][0]
    # ... and refuses to resume under another backbone input size
    capsys.readouterr()
    assert main([*base[:-4], "--image-size", "64", "--pairs-per-class", "4"]) == 2
    assert "image_size 48" in capsys.readouterr().err

    queries = json.loads((out / "queries.json").read_text())
    assert len(queries) == 2 * len(json.loads((data / "retrieval.json").read_text())["classes"]["test"])
    assert [q["ap"] for q in queries] == sorted(q["ap"] for q in queries)
    assert all(len(q["top10"]) == 10 and Path(q["query"]).is_file() for q in queries)
    with Image.open(out / "retrieval_grid.png") as grid:
        assert grid.size[0] > 7 * 48 and grid.size[1] > 6 * 48

    emb = Embedder(out / "embedder.onnx")
    assert emb.card.dim == 256 and emb.card.image_size == 48 and emb.card.backbone == "small/cls+double"
    assert emb.card.metrics["test"]["mAP"] == round(second["test"]["256"]["mAP"], 4)
    if second["match_distance"] is not None:
        assert 0 < emb.card.match_distance <= 2 and emb.same_model(emb.card.match_distance) is True
    # the exported graph gives the trained net's embeddings through the serving half's preprocessing
    state = torch.load(out / "retrieval_last.pt", weights_only=False)["state"]
    net = new_net(RetrievalConfig(image_size=48))
    net.load_state_dict(state["best"][1])
    d = load_data(RetrievalConfig(data=str(data), image_size=48))
    c = d.classes["test"][0]
    want = embed_all(net, d.x[c][:4])
    got = emb.embed([Image.open(p).convert("RGB") for p in d.paths[c][:4]])
    assert got.shape == (4, 256) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_retrieval_train_runs_on_firearm14k_layout(tmp_path):
    from dangerclip_cli.main import main

    root = _firearm14k(tmp_path / "f14k", per_class=6)
    out = tmp_path / "run"
    args = ["retrieval", "train", "--data", str(root), "--out", str(out), "--image-size", "32", "--cls-epochs", "1"]
    assert main([*args, "--pair-epochs", "1", "--pairs-per-class", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    queries = json.loads((out / "queries.json").read_text())
    assert len(queries) == 6 and all(Path(q["query"]).parent.name == "query_image" for q in queries)
    assert all(Path(t["file"]).parent.name == "database_image" for q in queries for t in q["top10"])
    assert 0 < m["test"]["256"]["mAP"] <= 1 and (out / "embedder.onnx").stat().st_size > 0


def test_an_onnx_file_without_an_embedder_card_is_refused(tiny_onnx_path):
    from dangerclip.runtime.embedder import Embedder

    with pytest.raises(ValueError, match="no embedder card"):
        Embedder(tiny_onnx_path)
