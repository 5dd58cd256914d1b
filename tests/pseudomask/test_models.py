"""Building GroundingDINO and SAM offline: weights from local files, clear errors for missing ones."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from dangerclip_cli.main import main
from pseudomask.models import (
    BERT_VOCAB_MD5,
    GroundingDinoDetector,
    WeightsError,
    build_grounding_dino,
    build_sam,
    resolve_text_encoder,
)


@pytest.fixture(scope="module")
def tiny_dino(bert_dir):
    torch.manual_seed(0)
    return build_grounding_dino("tiny", None, text_encoder=resolve_text_encoder(bert_dir), random_weights=True)


def test_text_encoder_resolution_and_errors(tmp_path, bert_dir):
    with pytest.raises(WeightsError, match="not found: .*nope"):
        resolve_text_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no vocab.txt"):
        resolve_text_encoder(tmp_path / "empty")
    te = resolve_text_encoder(bert_dir)
    assert te.vocab == bert_dir / "vocab.txt" and te.config == bert_dir / "config.json" and te.weights_dir is None
    fallback = resolve_text_encoder(None, use_hub=False)  # the bundled bert-base-uncased vocabulary
    assert hashlib.md5(fallback.vocab.read_bytes()).hexdigest() == BERT_VOCAB_MD5 and fallback.config is None


def test_sam_checkpoints_load_and_mismatches_are_named(tmp_path):
    with pytest.raises(ValueError, match="tiny.*vit_b.*vit_h"):
        build_sam("vit_x", None)
    with pytest.raises(WeightsError, match="none was given"):
        build_sam("tiny", None)
    with pytest.raises(WeightsError, match="not found: .*sam_missing.pth"):
        build_sam("tiny", tmp_path / "sam_missing.pth")
    torch.manual_seed(1)
    a = build_sam("tiny", None, random_weights=True)
    torch.save(a.state_dict(), tmp_path / "sam_tiny.pth")
    b = build_sam("tiny", tmp_path / "sam_tiny.pth")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    bad = {k: v for k, v in a.state_dict().items() if not k.startswith("mask_decoder")}
    torch.save(bad, tmp_path / "sam_bad.pth")
    with pytest.raises(WeightsError, match="does not fit SAM tiny"):
        build_sam("tiny", tmp_path / "sam_bad.pth")


def test_grounding_dino_checkpoint_round_trip_and_errors(tmp_path, bert_dir, tiny_dino):
    te = resolve_text_encoder(bert_dir)
    with pytest.raises(WeightsError, match="none was given"):
        build_grounding_dino("tiny", None, text_encoder=te)
    with pytest.raises(WeightsError, match="not found: .*gd.pth"):
        build_grounding_dino("tiny", tmp_path / "gd.pth", text_encoder=te)
    with pytest.raises(WeightsError, match="config not found"):
        build_grounding_dino("swinz", None, text_encoder=te, random_weights=True)
    # The official checkpoints wrap the weights (BERT's included) in {"model": ...} with DDP prefixes.
    state = {f"module.{k}": v for k, v in tiny_dino.state_dict().items()}
    torch.save({"model": state}, tmp_path / "gd.pth")
    loaded = build_grounding_dino("tiny", tmp_path / "gd.pth", text_encoder=te)
    for (k, va), vb in zip(tiny_dino.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    half = dict(list(tiny_dino.state_dict().items())[::2])
    torch.save({"model": half}, tmp_path / "gd_half.pth")
    with pytest.raises(WeightsError, match="leaves .* of the weights unset"):
        build_grounding_dino("tiny", tmp_path / "gd_half.pth", text_encoder=te)


def test_detector_on_a_batch_of_different_sizes(tiny_dino):
    det = GroundingDinoDetector(tiny_dino, {"weapon": ["gun", "knife"], "fire": ["fire"]}, image_size=96)
    assert det.caption == "gun . knife . fire ."
    assert det.token_mask.sum(1).tolist() == [2, 1]  # gun, knife → weapon; fire → fire
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((80, 120), (150, 90))]
    with torch.inference_mode():
        out = det.detect(imgs)
    assert len(out) == 2
    for img, res in zip(imgs, out, strict=True):
        assert set(res) == {"weapon", "fire"}
        n = sum(len(d) for d in res.values())
        assert n == tiny_dino.num_queries  # threshold 0: every query lands in exactly one category
        for d in res.values():
            assert d.boxes.shape == (len(d), 4) and len(d.phrases) == len(d)
            assert (d.boxes[:, [0, 2]] <= img.width).all() and (d.boxes[:, [1, 3]] <= img.height).all()
            assert ((d.scores >= 0) & (d.scores <= 1)).all()


def test_cli_names_the_missing_weight_file(tmp_path, capsys):
    (tmp_path / "d" / "weapon").mkdir(parents=True)
    rc = main(["pseudomask", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--dino-checkpoint" in capsys.readouterr().err
    (tmp_path / "gd.pth").write_bytes(b"x")
    rc = main(
        [
            "pseudomask",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "o"),
            "--dino-checkpoint",
            str(tmp_path / "gd.pth"),
            "--sam-model",
            "vit_b",
            "--sam-checkpoint",
            str(tmp_path / "sam_vit_b.pth"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "SAM vit_b checkpoint not found" in err and "sam_vit_b.pth" in err
