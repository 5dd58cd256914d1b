"""Firearm-type heads: pre-training methods, the downstream protocols, calibration, the exported head served
without torch, and resume. Small learnable image folders stand in for the fine-grained set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training.ssl import downstream as ds
from training.ssl.config import TypeConfig

CLASSES = ["pistol", "rifle", "toy-pistol"]


def _folder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Classes that differ in shape and colour, on random backgrounds, at random places: learnable in seconds."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = Image.new("RGB", (72, 72), tuple(int(v) for v in rng.integers(90, 170, 3)))
            d = ImageDraw.Draw(im)
            x, y = (int(v) for v in rng.integers(4, 20, 2))
            w, h = [(34, 12), (60, 7), (34, 12)][k]
            col = [(20, 20, 20), (20, 20, 20), (255, 110, 0)][k]
            d.rectangle([x, y + 20, x + w, y + 20 + h], fill=col)
            d.rectangle([x, y + 20 + h, x + 7, y + 38 + h], fill=col)
            im.save(root / c / f"{i:02d}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("types"))


def _cfg(data: Path, out: Path, **kw) -> TypeConfig:
    base = TypeConfig(
        data=str(data),
        out=str(out),
        backbone="resnet-small",
        method="supervised",
        epochs=6,
        batch_size=16,
        lr=2e-3,
        finetune_epochs=4,
        knn_every=3,
        threads=2,
    )
    return dataclasses.replace(base, **kw)


@pytest.mark.slow
def test_a_trained_head_is_served_without_torch_with_types_levels_and_look_alikes(data: Path, tmp_path: Path):
    from training.ssl.run import run

    figures = run(_cfg(data, tmp_path))
    assert figures["served"]["test_accuracy"] >= 0.8, figures["served"]
    # the served protocol is the one val prefers, and it is served as it was measured (fine-tuning works on a copy
    # of the backbone, so a probe served after it is still the probe)
    probe_val = max(figures["probe"]["val_accuracy_by_C"].values())
    chosen = figures["served"]["protocol"]
    assert chosen == ("finetune" if figures["finetune"]["best_val_accuracy"] > probe_val else "probe")
    assert figures["served"]["test_accuracy"] == pytest.approx(figures[chosen]["test"]["accuracy"])
    knn = [e["knn_val_accuracy"] for e in figures["pretrain"]["history"]["epochs"] if "knn_val_accuracy" in e]
    assert len(knn) == 2 and knn[-1] > 1 / len(CLASSES)  # the monitor ran at epochs 3 and 6
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "reliability.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["splits"]["classes"] == 3

    from dangerclip.runtime.typehead import TypeHead

    head = TypeHead(tmp_path / "type_head.onnx")
    assert head.card.classes == CLASSES and head.card.look_alike == ["toy-pistol"]
    imgs = [Image.open(p).convert("RGB") for p in sorted((data / "toy-pistol").glob("*.jpg"))[:6]]
    preds = head.predict(imgs)
    assert sum(p.type == "toy-pistol" for p in preds) >= 5
    assert all(p.look_alike == (p.type == "toy-pistol") for p in preds)
    assert all(p.confidence == head.card.level(p.probability) for p in preds)
    for p in preds:  # three classes, top 3: the whole distribution, best first, the prediction at its head
        assert [c for c, _ in p.top][0] == p.type and abs(p.top[0][1] - p.probability) < 1e-6
        assert sorted(c for c, _ in p.top) == sorted(CLASSES) and abs(sum(q for _, q in p.top) - 1) < 1e-4
        assert [q for _, q in p.top] == sorted((q for _, q in p.top), reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "dino", "mixed", "mae"])
def test_each_self_supervised_method_trains_and_reports(method: str, data: Path, tmp_path: Path):
    from training.ssl.run import run

    cfg = _cfg(data, tmp_path, method=method, backbone="vit-small", epochs=1, finetune_epochs=0, export=False)
    figures = run(cfg)
    (row,) = figures["pretrain"]["history"]["epochs"]
    assert np.isfinite(row["loss"]) and 0 <= row["knn_val_accuracy"] <= 1
    assert 0 <= figures["probe"]["test"]["accuracy"] <= 1 and "finetune" not in figures


@pytest.mark.slow
def test_mae_trains_the_backbone_in_place_and_learns_to_fill_masked_patches(data: Path, tmp_path: Path):
    """MAE pre-trains the very backbone the probe and the fine-tuning get (lightly's masked encoder wraps its
    ViT), with the position embeddings fixed as MAE fixes them; its reconstruction loss falls."""
    import torch

    from dangerclip.modeling.typenet import build_backbone
    from training.ssl.data import read_splits
    from training.ssl.pretrain import pretrain

    cfg = _cfg(data, tmp_path, method="mae", backbone="vit-small", epochs=8, knn_every=0)
    splits = read_splits(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    torch.manual_seed(0)
    backbone, spec = build_backbone("vit-small")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    history = pretrain(cfg, backbone, spec, splits.train, splits.val, 3, [], 64, torch.device("cpu"), tmp_path)
    losses = [e["loss"] for e in history["epochs"]]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    after = backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("encoder.layers" in k for k in changed) and "vit.conv_proj.weight" in changed
    assert not backbone.vit.encoder.pos_embedding.requires_grad
    assert 0 <= history["epochs"][-1]["knn_val_accuracy"] <= 1  # the monitor still runs at the last epoch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vit-b-16"])
def test_the_papers_backbones_give_their_features_and_the_vit_b_16_takes_mae(name: str):
    """What a GPU user runs (``--backbone resnet50`` / ``vit-b-16``), at batch 2 on the CPU: features of the
    spec's size at the spec's input, and MAE's masked reconstruction on the ViT-B/16 (patch 16, 197 tokens)."""
    import torch

    from dangerclip.modeling.typenet import build_backbone
    from training.ssl.pretrain import _MAE

    torch.manual_seed(0)
    backbone, spec = build_backbone(name)
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        assert backbone.eval()(x).shape == (2, spec.feature_dim)
        if spec.family == "vit":
            loss = _MAE(backbone).loss(x)
            assert loss.ndim == 0 and torch.isfinite(loss)


def test_mae_is_refused_on_a_resnet_and_left_out_of_its_rows_in_a_compare(data: Path, tmp_path: Path):
    from training.ssl.compare import compare

    with pytest.raises(ValueError, match="needs a ViT backbone.*not 'resnet-small'"):
        _cfg(data, tmp_path, method="mae", backbone="resnet-small").validate()
    table = compare(_cfg(data, tmp_path), methods=["mae"], backbones=["resnet-small"], clip=False)
    assert "| resnet-small |" not in table and not (tmp_path / "resnet-small-mae").exists()


@pytest.mark.slow
def test_pre_training_resumes_where_it_stopped(data: Path, tmp_path: Path, caplog):
    import logging

    from training.ssl.run import run

    run(_cfg(data, tmp_path, method="simclr", epochs=1, finetune_epochs=0, export=False))
    with caplog.at_level(logging.INFO, logger="training.ssl.pretrain"):
        figures = run(_cfg(data, tmp_path, method="simclr", epochs=2, finetune_epochs=0, export=False))
    assert "resuming pre-training at epoch 1" in caplog.text
    assert [e["epoch"] for e in figures["pretrain"]["history"]["epochs"]] == [1, 2]
    # the same folder under another method or recipe is not resumed into: its state would not fit, or mislead
    with pytest.raises(ValueError, match="method 'simclr' \\(now 'dino'\\)"):
        run(_cfg(data, tmp_path, method="dino", epochs=3, finetune_epochs=0, export=False))
    with pytest.raises(ValueError, match="lr 0.002 \\(now 0.001\\)"):
        run(_cfg(data, tmp_path, method="simclr", lr=1e-3, epochs=3, finetune_epochs=0, export=False))


def test_a_label_fraction_keeps_that_share_of_each_class_labelled_and_loses_no_image(data: Path):
    from training.ssl.data import keep_labels, read_splits

    splits = read_splits(data)
    few, rest = keep_labels(splits, 0.25)
    per_class = [sum(i.label == k for i in splits.train) for k in range(3)]
    assert [sum(i.label == k for i in few.train) for k in range(3)] == [round(n * 0.25) for n in per_class]
    assert {i.label for i in rest} == {-1}  # the others pre-train without their labels
    assert sorted(i.path for i in few.train + rest) == sorted(i.path for i in splits.train)
    assert few.val == splits.val and few.test == splits.test
    assert keep_labels(splits, 0.25)[0].train == few.train  # the same images each time
    one, _ = keep_labels(splits, 0.001)
    assert [sum(i.label == k for i in one.train) for k in range(3)] == [1, 1, 1]  # never a class without labels
    assert keep_labels(splits, 1.0) == (splits, [])
    with pytest.raises(ValueError, match="label_fraction"):
        TypeConfig(data=str(data), label_fraction=0).validate()


def test_a_compare_row_made_before_a_setting_existed_reads_back_as_that_settings_default(data: Path, tmp_path: Path):
    from training.ssl.compare import finished
    from training.ssl.data import read_splits

    splits = read_splits(data)
    cfg = _cfg(data, tmp_path)
    old = {k: v for k, v in cfg.to_dict().items() if k != "label_fraction"}
    (tmp_path / "metrics.json").write_text(json.dumps({"config": old, "splits": splits.counts(), "probe": {}}))
    assert finished(cfg, splits) is not None
    with pytest.raises(ValueError, match=r"another run's figures \(label_fraction"):
        finished(dataclasses.replace(cfg, label_fraction=0.5), splits)


@pytest.mark.slow
def test_with_few_labels_self_supervision_pre_trains_on_every_train_image_and_the_rest_on_the_labelled(
    data: Path, tmp_path: Path
):
    from training.ssl.run import run

    few = {"label_fraction": 0.25, "epochs": 1, "finetune_epochs": 1, "export": False}
    ssl = run(_cfg(data, tmp_path / "simclr", method="simclr", **few))
    sup = run(_cfg(data, tmp_path / "sup", method="supervised", **few))
    full = run(_cfg(data, tmp_path / "full", method="supervised", epochs=1, finetune_epochs=0, export=False))
    n_train = full["splits"]["train"]
    assert ssl["pretrain"]["history"]["images"] == n_train == full["pretrain"]["history"]["images"]
    assert sup["pretrain"]["history"]["images"] == ssl["splits"]["train"] == sup["splits"]["train"] < n_train / 3
    assert ssl["splits"]["val"] == full["splits"]["val"] and ssl["splits"]["test"] == full["splits"]["test"]


def test_temperature_and_confidence_cuts_are_fit_on_held_out_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 4000)
    # Over-confident logits: right 70 % of the time, always very sure.
    right = rng.random(4000) < 0.7
    pred = np.where(right, y, (y + rng.integers(1, 4, 4000)) % 4)
    lg = np.full((4000, 4), -4.0)
    lg[np.arange(4000), pred] = 4.0 + rng.normal(0, 1, 4000)
    t = ds.fit_temperature(lg, y)
    assert t > 1.5  # softened
    assert ds.ece(ds.softmax(lg, t), y) < ds.ece(ds.softmax(lg), y) / 3
    # Confident-and-right rows: the cut for 95 % lies above most of the over-confident mass.
    lg2 = lg.copy()
    lg2[right, pred[right]] += 6
    cuts = ds.confidence_cuts(ds.softmax(lg2), y)
    p = ds.softmax(lg2)
    kept = p.max(1) >= cuts["high"]
    assert (p.argmax(1)[kept] == y[kept]).mean() >= 0.95 and cuts["medium"] <= cuts["high"]


def test_a_folder_needs_classes_with_enough_images(tmp_path: Path):
    from training.ssl.data import read_splits

    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(ValueError, match="at least two class folders"):
        read_splits(tmp_path)
    (tmp_path / "other").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "other" / "b.png")
    with pytest.raises(ValueError, match="needs at least 3"):
        read_splits(tmp_path)


@pytest.mark.slow
def test_compare_reads_finished_rows_back_and_reruns_a_row_of_another_run(data: Path, tmp_path: Path, caplog):
    """A compare takes hours: run again (after an interruption, or to gather rows run by other processes) it
    reads each finished row back instead of training it again, and refuses a row made under other settings."""
    import logging

    from training.ssl.compare import compare

    cfg = _cfg(data, tmp_path, epochs=1, finetune_epochs=0, knn_every=1)
    first = compare(cfg, methods=["random", "supervised"], backbones=["resnet-small"], clip=False)
    sup = tmp_path / "resnet-small-supervised" / "metrics.json"
    stamp = sup.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="training.ssl"):
        again = compare(dataclasses.replace(cfg, threads=1), ["random", "supervised"], ["resnet-small"], clip=False)
    assert again == first and sup.stat().st_mtime_ns == stamp
    assert caplog.text.count("read back from") == 2
    with pytest.raises(ValueError, match=r"resnet-small-supervised.metrics\.json holds another run's figures \(lr"):
        compare(dataclasses.replace(cfg, lr=1e-3), ["supervised"], ["resnet-small"], clip=False)
    assert sup.stat().st_mtime_ns == stamp
