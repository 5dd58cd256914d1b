"""Fine-grained firearm data and DeepFirearm retrieval: the generator, the split protocol, the losses exactly as
specified, trapezoidal AP and CMC, and the ablation command end to end on a small set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dangerclip.modeling.retrieval import EmbeddingNet, build_backbone, double_margin_loss, mac, single_margin_loss
from training.firearms.catalogue import FAMILIES, make_catalogue
from training.firearms.dataset import FirearmsConfig, retrieval_split
from training.firearms.draw import draw_image
from training.retrieval.evaluate import average_precision, pca, retrieval_metrics


def test_the_catalogue_has_six_confusable_families_and_is_deterministic():
    cat = make_catalogue(10, seed=0)
    assert len(cat) == 60 and {m.family for m in cat} == set(FAMILIES)
    assert {m.tip for m in cat if m.family == "lookalike"} == {"toy", "alarm", "airsoft"}
    assert make_catalogue(10, seed=0) == cat and make_catalogue(10, seed=1) != cat
    pistols = [m for m in cat if m.family == "pistol"]
    assert all(abs(m.barrel / pistols[0].barrel - 1) < 0.5 for m in pistols)  # near one prototype: confusable
    a, b = draw_image(cat[0], 1, 64), draw_image(cat[0], 2, 64)
    assert a.size == (64, 64) and np.asarray(a).tobytes() != np.asarray(b).tobytes()
    assert np.asarray(draw_image(cat[0], 1, 64)).tobytes() == np.asarray(a).tobytes()


def test_the_split_keeps_classes_apart_and_takes_two_queries_per_class():
    cfg = FirearmsConfig(per_family=10, images_per_model=12)
    s = retrieval_split(make_catalogue(10), cfg)
    parts = [set(v) for v in s["classes"].values()]
    assert sum(len(p) for p in parts) == 60 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set(s["queries"]) == parts[1] | parts[2] and all(len(q) == 2 for q in s["queries"].values())


def test_losses_are_the_papers():
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    same = torch.tensor([1, 1, 1, 0, 0, 0])
    d = (a - b).norm(dim=-1)
    want = 0.5 * torch.where(same.bool(), torch.relu(d - 0.8) ** 2, torch.relu(1.2 - d) ** 2).mean()
    assert double_margin_loss(a, b, same).item() == pytest.approx(want.item(), rel=1e-6)
    want1 = 0.5 * torch.where(same.bool(), d**2, torch.relu(1.0 - d) ** 2).mean()
    assert single_margin_loss(a, b, same).item() == pytest.approx(want1.item(), rel=1e-6)
    # Inside the margins nothing is learned: positives closer than 0.8, negatives farther than 1.2.
    near = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.3]]), dim=-1)
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert double_margin_loss(near[:1], near[1:], torch.tensor([1])).item() == 0
    assert double_margin_loss(far[:1], far[1:], torch.tensor([0])).item() == 0


def test_mac_embedding_is_a_unit_vector_of_the_channel_maxima():
    backbone, dim = build_backbone("small")
    net = EmbeddingNet(backbone, dim).eval()
    x = torch.randn(2, 3, 64, 64)
    e = net(x)
    assert e.shape == (2, dim) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    fm = backbone(x)
    assert torch.allclose(mac(fm), fm.flatten(2).max(-1).values)
    with pytest.raises(ValueError, match="small"):
        build_backbone("resnet9000")


def test_trapezoidal_ap_and_cmc_by_hand():
    assert average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    assert average_precision(np.array([0, 0])) == 0.0
    db = np.eye(4)
    labels = np.array([0, 0, 1, 1])
    q = np.array([[1.0, 0.9, 0, 0], [0, 0, 0.2, 1.0]])
    m = retrieval_metrics(db, labels, q, np.array([0, 1]))
    assert m["mAP"] == pytest.approx(1.0) and m["rank1"] == 1.0
    m = retrieval_metrics(db, labels, q, np.array([1, 0]))
    assert m["rank1"] == 0.0 and m["rank4"] == 1.0 and 0 < m["mAP"] < 1
    a, b = pca(np.random.default_rng(0).normal(size=(20, 8)), np.ones((3, 8)), 4)
    assert a.shape == (20, 4) and b.shape == (3, 4) and np.allclose(np.linalg.norm(a, axis=1), 1)


@pytest.mark.slow
def test_the_ablation_command_writes_the_table(tmp_path: Path, capsys):
    from dangerclip_cli.main import main

    data = tmp_path / "fa"
    assert main(["firearms", str(data), "--per-family", "3", "--images-per-model", "6", "--size", "64"]) == 0
    assert len(list((data / "types").glob("*"))) == 8  # five lethal families + toy, alarm, airsoft
    conf = json.loads((data / "confusability.json").read_text())
    assert 0 <= conf["model_accuracy"] <= 1 and conf["model_chance"] == pytest.approx(1 / 18, abs=1e-3)
    out = tmp_path / "ab"
    args = ["retrieval", "ablation", "--data", str(data), "--out", str(out), "--image-size", "48"]
    assert main([*args, "--cls-epochs", "1", "--pair-epochs", "1", "--pairs-per-class", "4", "--no-clip"]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in rows] == [
        "off-the-shelf MAC",
        "retrieval, single margin",
        "retrieval, double margin",
        "classification only",
        "classification + double margin",
    ]
    assert all(0 <= r["test"]["256"]["mAP"] <= 1 and not math.isnan(r["test"]["256"]["mAP"]) for r in rows)
    assert "classification + double margin" in capsys.readouterr().out
