"""The model card (what every checkpoint and ONNX file says about itself) and the danger-map summaries and
overlays built from it: numpy and Pillow only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from dangerclip.runtime.card import (
    CARD_KEY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneIdentity,
    ModelCard,
    PreprocessConfig,
)
from dangerclip.runtime.heatmap import map_peaks, overlay
from dangerclip.runtime.preprocess import resize_and_crop


def _card(**changes) -> ModelCard:
    card = ModelCard(
        name="tiny",
        version="1.2.3",
        mode="trained",
        prompts=["weapon", "knife"],
        thresholds={"weapon": 0.4, "knife": 0.7},
        preprocess=PreprocessConfig(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        backbone=BackboneIdentity("tiny", "", "ab" * 32),
        grid=(4, 4),
        safe_prompts=["a photo"],
        trained=True,
        metrics={"test": {"f1": 0.9}},
        notes="synthetic",
    )
    return dataclasses.replace(card, **changes)


def test_a_card_survives_json_as_every_file_stores_it():
    card = _card()
    back = ModelCard.from_json(card.to_json())
    assert back == card
    # JSON keeps tuples as lists: the round trip gives tuples back, so cards compare equal and hash the same.
    assert isinstance(back.grid, tuple) and isinstance(back.preprocess.mean, tuple)
    assert json.loads(card.to_json())["preprocess"]["mean"] == list(IMAGENET_MEAN)
    assert CARD_KEY == "dangerclip.card"  # the key inside model files: renaming it orphans every model out there


def test_a_minimal_card_from_an_older_writer_gets_the_documented_defaults():
    d = {
        "name": "old",
        "version": "0",
        "mode": "zeroshot",
        "prompts": ["gun"],
        "preprocess": {},
        "backbone": {"model": "ViT-B-16", "pretrained": "openai", "sha256": ""},
    }
    card = ModelCard.from_dict(d)
    assert card.grid == (14, 14) and card.preprocess == PreprocessConfig()
    assert card.threshold_vector() == [0.5] and not card.trained and card.safe_prompts == []


def test_a_card_missing_what_scoring_needs_is_refused_with_the_names():
    d = json.loads(_card().to_json())
    del d["prompts"], d["backbone"]
    with pytest.raises(ValueError, match=r"missing \['prompts', 'backbone'\]"):
        ModelCard.from_dict(d)


def test_thresholds_follow_the_prompt_order_not_the_dict_order():
    card = _card(prompts=["knife", "weapon", "bat"], thresholds={"weapon": 0.4, "knife": 0.7})
    assert card.categories == ["knife", "weapon", "bat"]
    assert card.threshold_vector() == [0.7, 0.4, 0.5]


def test_map_peaks_names_the_hottest_patch_and_the_share_over_half():
    maps = np.zeros((2, 4, 5), np.float32)
    maps[0, 2, 3] = 0.9
    maps[0, 0, 0] = 0.5  # exactly at the line counts
    maps[1] += 0.1
    maps[1, 3, 0] = 0.3
    peaks = map_peaks(["weapon", "knife"], maps)
    assert peaks["weapon"] == {"peak": 0.9, "peak_at": [2, 3], "area": round(2 / 20, 4)}
    assert peaks["knife"] == {"peak": 0.3, "peak_at": [3, 0], "area": 0.0}


def test_overlay_leaves_safe_patches_as_they_are_and_reddens_hot_ones():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8))
    cfg = PreprocessConfig(image_size=64)
    grid = np.zeros((4, 4), np.float32)
    grid[0, 0] = 1.0
    out = overlay(img, grid, cfg)
    view = np.asarray(resize_and_crop(img, cfg), np.int16)
    got = np.asarray(out, np.int16)
    assert out.size == (64, 64) and out.mode == "RGB"
    # Far from the hot patch (bottom-right quarter) the image is untouched.
    assert np.abs(got[40:, 40:] - view[40:, 40:]).max() <= 1
    # At the hot patch's centre red rises and blue falls.
    c = (slice(4, 12), slice(4, 12))
    assert got[c][..., 0].mean() > view[c][..., 0].mean() + 20
    assert got[c][..., 2].mean() < view[c][..., 2].mean() - 20
