"""The feature cache: stores what the backbone computes, is reused, and is rebuilt when its key changes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import make_dataset

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.manifest import ManifestError
from dangerclip.runtime.preprocess import load_image, preprocess
from training import cache as C
from training.data import PLAIN, ViewRecipe, load_rows

CFG = PreprocessConfig(image_size=32)
GRID = (2, 2)


class CountingEncoder:
    """A stand-in backbone (per-patch mean colour through a fixed projection) that counts its calls."""

    def __init__(self, tag: str = "a") -> None:
        self.sha256 = f"fake-{tag}"
        gen = torch.Generator().manual_seed(hash(tag) % 1000)
        self.proj = torch.randn(3, 8, generator=gen)
        self.calls = 0
        self.inputs = 0

    def encode_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        self.inputs += images.shape[0]
        pooled = torch.nn.functional.avg_pool2d(images, 16)  # [B, 3, 2, 2]
        patches = pooled.flatten(2).transpose(1, 2) @ self.proj  # [B, 4, 8]
        g = torch.nn.functional.normalize(patches.mean(1), dim=-1)
        return g, patches


@pytest.fixture()
def rows(tmp_path: Path):
    return load_rows(make_dataset(tmp_path / "ds", n=10), ["weapon"])


def test_cache_holds_the_backbone_outputs_of_every_view(rows, tmp_path: Path) -> None:
    enc = CountingEncoder()
    recipe = ViewRecipe(flip=True, color_views=1)
    fc = C.build_or_load(enc, rows, ["weapon"], CFG, GRID, recipe, tmp_path / "c", "train", encode_batch=8)
    assert fc.stats.built and fc.stats.encoded == 10 * 4
    assert fc.g.shape == (10, 4, 8) and fc.patches.shape == (10, 4, 4, 8)
    assert fc.g.dtype == np.float16 and isinstance(fc.patches, np.memmap)
    x = torch.from_numpy(preprocess(load_image(rows[3].image), CFG))[None]
    g, p = enc.encode_dense(x)
    np.testing.assert_allclose(fc.g[3, 0], g[0].numpy(), atol=2e-3)
    np.testing.assert_allclose(fc.patches[3, 0], p[0].numpy(), atol=2e-2, rtol=2e-3)
    # View 2 is view 0 mirrored: the encoder of the mirrored image, and the mirrored mask grid.
    g2, _ = enc.encode_dense(torch.flip(x, dims=[3]))
    np.testing.assert_allclose(fc.g[3, 2], g2[0].numpy(), atol=2e-3)
    b = fc.batch(np.array([0, 0]), np.array([0, 2]))
    m0 = b["masks"][0, 0].reshape(2, 2)
    np.testing.assert_allclose(b["masks"][1, 0].reshape(2, 2).numpy(), m0.flip(1).numpy())
    assert b["labels"].tolist() == [[1.0], [1.0]]
    assert b["mask_valid"].all()
    assert b["g"].dtype == torch.float32 and b["patches"].shape == (2, 4, 8)


def test_cache_is_reused_and_invalidated(rows, tmp_path: Path) -> None:
    root = tmp_path / "c"
    enc = CountingEncoder()
    first = C.build_or_load(enc, rows, ["weapon"], CFG, GRID, PLAIN, root, "train")
    calls = enc.calls
    again = C.build_or_load(enc, rows, ["weapon"], CFG, GRID, PLAIN, root, "train")
    assert not again.stats.built and enc.calls == calls and again.path == first.path
    # Another backbone, another preprocessing, another view recipe: each is a new cache, built anew.
    other = C.build_or_load(CountingEncoder("b"), rows, ["weapon"], CFG, GRID, PLAIN, root, "train")
    assert other.stats.built and other.path != first.path
    assert not first.path.exists()  # pruned: same name, stale key
    cfg2 = replace(CFG, interpolation="bilinear")
    assert C.build_or_load(enc, rows, ["weapon"], cfg2, GRID, PLAIN, root, "train").stats.built
    assert C.build_or_load(
        enc, rows, ["weapon"], cfg2, GRID, ViewRecipe(flip=True, color_views=0), root, "train"
    ).stats.built
    # A changed image file changes the key too.
    Path(rows[0].image).write_bytes(Path(rows[2].image).read_bytes())
    assert C.build_or_load(
        enc, rows, ["weapon"], cfg2, GRID, ViewRecipe(flip=True, color_views=0), root, "train"
    ).stats.built
    # Relabelling re-computes only the small targets file, not the features.
    calls = enc.calls
    rows[1].labels = {"weapon": 1}
    fc = C.build_or_load(enc, rows, ["weapon"], cfg2, GRID, ViewRecipe(flip=True, color_views=0), root, "train")
    assert not fc.stats.built and enc.calls == calls and fc.labels[1, 0] == 1.0
    meta = json.loads((fc.path / "meta.json").read_text())
    assert meta["backbone_sha256"] == "fake-a" and meta["recipe"]["flip"] is True


def test_undecodable_rows_are_listed_before_training(rows, tmp_path: Path) -> None:
    # Headers pass the manifest check; the data is truncated, so only a full decode finds it.
    for i in (2, 5):
        data = Path(rows[i].image).read_bytes()
        Path(rows[i].image).write_bytes(data[: len(data) // 3])
    with pytest.raises(ManifestError) as e:
        C.build_or_load(CountingEncoder(), rows, ["weapon"], CFG, GRID, PLAIN, tmp_path / "c", "train")
    assert [i.line for i in e.value.issues] == [3, 6]
    assert not list((tmp_path / "c").glob("train-*"))  # nothing half-built is left
    fc = C.build_or_load(CountingEncoder(), rows, ["weapon"], CFG, GRID, PLAIN, tmp_path / "c", "train", skip_bad=True)
    assert fc.valid_indices.tolist() == [0, 1, 3, 4, 6, 7, 8, 9]


def test_cache_with_the_real_tiny_backbone(tiny_model, tmp_path: Path) -> None:
    rows = load_rows(make_dataset(tmp_path / "ds", n=3), ["weapon"])
    cfg = tiny_model.card.preprocess
    fc = C.build_or_load(tiny_model.backbone, rows, ["weapon"], cfg, tiny_model.grid, PLAIN, tmp_path / "c", "val")
    x = torch.from_numpy(preprocess(load_image(rows[1].image), cfg))[None]
    with torch.no_grad():
        ref = tiny_model(x)
        b = fc.batch(np.array([1]))
        out = tiny_model.from_features(b["g"], b["patches"])
    # fp16 storage changes the scores only in the third decimal.
    np.testing.assert_allclose(out.scores.numpy(), ref.scores.numpy(), atol=2e-3)
    assert fc.meta["backbone_sha256"] == tiny_model.backbone.sha256
