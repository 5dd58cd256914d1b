"""The synthetic generator: determinism, exact masks, labels, splits, manifest compatibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dangerclip.runtime.manifest import read_manifest
from training import synth
from training.synth import CATEGORY_KINDS, SynthConfig, caption_for, generate, make_sample, scene


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    cfg = SynthConfig(n=12, seed=3)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", SynthConfig(n=12, seed=3))
    generate(tmp_path / "c", SynthConfig(n=12, seed=4))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a["images/000000.jpg"] != c["images/000000.jpg"]


def test_image_depends_only_on_seed_and_index() -> None:
    # A set can be extended (start=) or generated in pieces without changing earlier images.
    whole = make_sample(7, SynthConfig(n=10, seed=5))
    part = make_sample(7, SynthConfig(n=3, seed=5, start=7))
    assert np.array_equal(np.asarray(whole.image), np.asarray(part.image))
    assert whole.caption == part.caption


@pytest.mark.parametrize("index", range(40))
def test_masks_are_exactly_the_visible_weapon_pixels(index: int) -> None:
    # Draw each sample again with one flat colour per object on black, no blur: a category's mask must
    # equal, pixel for pixel, where that category's objects are visible after occlusion.
    cfg = SynthConfig(n=40, seed=11, categories=["gun", "knife", "weapon"])
    s = make_sample(index, cfg)
    owner = _owner_from_drawing(index, cfg)
    for cat, mask in s.masks.items():
        assert mask.dtype == bool and mask.shape == (cfg.size, cfg.size)
        ids = [j + 1 for j, o in enumerate(s.objects) if o.kind in CATEGORY_KINDS[cat]]
        expected = np.isin(owner, ids)
        assert np.array_equal(mask, expected), cat
        assert s.labels[cat] == int(expected.any())
    for j, o in enumerate(s.objects):
        assert o.visible == int((owner == j + 1).sum())
    assert s.masks["weapon"].sum() == s.masks["gun"].sum() + s.masks["knife"].sum()


def _owner_from_drawing(index: int, cfg: SynthConfig) -> np.ndarray:
    """Re-run the generator with its image drawing replaced by an independent owner-colour drawing."""
    drawn_calls: list[tuple[list[tuple[float, float]], int]] = []
    original = scene._owner_map

    def spy(drawn, size):  # type: ignore[no-untyped-def]
        drawn_calls.clear()
        for j, d in enumerate(drawn):
            for poly in d[1]:
                drawn_calls.append((poly, j + 1))
        return original(drawn, size)

    scene._owner_map = spy
    try:
        make_sample(index, cfg)
    finally:
        scene._owner_map = original
    # Independent rasterisation on an RGB canvas, the way the image itself is painted.
    canvas = Image.new("RGB", (cfg.size, cfg.size), (0, 0, 0))
    d = ImageDraw.Draw(canvas)
    for poly, j in drawn_calls:
        d.polygon(poly, fill=(j, 0, 0))
    return np.asarray(canvas)[..., 0]


def test_weapon_pixels_carry_the_weapon_colours() -> None:
    # On the image itself (no blur, PNG-exact pixels), every masked pixel has one of the two colours its
    # object was painted with, so the mask is not offset or dilated relative to the picture.
    cfg = SynthConfig(n=30, seed=2, blur_probability=0.0)
    checked = 0
    for i in range(30):
        s = make_sample(i, cfg)
        if not s.labels["weapon"]:
            continue
        rgb = np.asarray(s.image)
        px = rgb[s.masks["weapon"]]
        colours = np.unique(px, axis=0)
        n_weapons = sum(o.weapon and o.visible > 0 for o in s.objects)
        assert len(colours) <= 2 * n_weapons
        checked += 1
    assert checked >= 5


def test_labels_and_negatives() -> None:
    cfg = SynthConfig(n=200, seed=0, categories=["gun", "knife"])
    samples = [make_sample(i, cfg) for i in range(60)]
    for s in samples:
        kinds = {o.kind for o in s.objects if o.visible}
        assert s.labels["gun"] == int(bool(kinds & set(CATEGORY_KINDS["gun"])))
        assert s.labels["knife"] == int(bool(kinds & set(CATEGORY_KINDS["knife"])))
        if not any(s.labels.values()):
            assert not any(m.any() for m in s.masks.values())
            assert s.objects and all(not o.weapon for o in s.objects)
    pos = np.mean([any(s.labels.values()) for s in samples])
    assert 0.3 < pos < 0.7


def test_category_subset_draws_only_its_weapons() -> None:
    cfg = SynthConfig(n=50, seed=1, categories=["knife"], positive_fraction=1.0)
    for i in range(20):
        s = make_sample(i, cfg)
        assert all(o.kind in CATEGORY_KINDS["knife"] for o in s.objects if o.weapon)
        assert s.labels == {"knife": 1}


def test_manifest_reads_back_with_masks_splits_and_captions(tmp_path: Path) -> None:
    cfg = SynthConfig(n=60, seed=9, categories=["gun", "knife"], image_format="png")
    manifest = generate(tmp_path, cfg)
    rows = read_manifest(manifest, ["gun", "knife"])
    assert len(rows) == 60
    assert {r.split for r in rows} == {"train", "val", "test"}
    raw = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row, rec in zip(rows, raw, strict=True):
        assert set(row.masks) == {"gun", "knife"}
        m = np.asarray(Image.open(row.masks["gun"]))
        assert m.shape == (cfg.size, cfg.size)
        assert int(m.any()) == row.labels["gun"]
        assert rec["caption"].endswith("background")
        for o in rec["objects"]:
            if o["visible"]:
                assert f"{o['colour']} {o['kind']}" in rec["caption"]
    saved = json.loads((tmp_path / "synth.json").read_text())
    assert saved["seed"] == 9 and saved["categories"] == ["gun", "knife"]


def test_splits_are_stable_and_roughly_sized() -> None:
    cfg = SynthConfig(n=2000, seed=0)
    splits = [synth.split_of(i, cfg) for i in range(2000)]
    assert splits == [synth.split_of(i, cfg) for i in range(2000)]
    assert 150 < splits.count("test") < 250 and 150 < splits.count("val") < 250


def test_caption_grammar() -> None:
    assert caption_for([("red", "pistol")], "plain") == "a red pistol on a plain background"
    assert (
        caption_for([("red", "pistol"), ("blue", "circle"), ("orange", "umbrella")], "striped")
        == "a red pistol, a blue circle and an orange umbrella on a striped background"
    )


def test_bad_options_are_refused() -> None:
    for bad in (
        SynthConfig(categories=["sword"]),
        SynthConfig(image_format="gif"),
        SynthConfig(val_fraction=0.6, test_fraction=0.5),
        SynthConfig(min_scale=0.9, max_scale=0.2),
    ):
        with pytest.raises(ValueError):
            bad.validate()


def test_cli_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dangerclip_cli.main import main

    assert main(["synth", str(tmp_path / "s"), "-n", "8", "--seed", "1", "--categories", "gun,knife"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("manifest.jsonl") and Path(out).is_file()
    assert len(list((tmp_path / "s" / "images").iterdir())) == 8
    assert main(["synth", str(tmp_path / "t"), "--categories", "sword"]) == 2


SAMPLES = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "samples"


def test_committed_samples_are_what_the_generator_writes(tmp_path: Path) -> None:
    from dangerclip.runtime.preprocess import load_image

    manifest = synth.write_samples(tmp_path)
    fresh = [json.loads(line) for line in manifest.read_text().splitlines()]
    committed = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines()]
    assert fresh == committed
    assert len(committed) == 16 and sum(r["labels"]["weapon"] for r in committed) == 8
    modes = set()
    for row in committed:
        path = SAMPLES / row["image"]
        assert path.stat().st_size < 40_000
        with Image.open(path) as im:
            modes.add(im.mode)
            a = np.asarray(im, dtype=np.float32)
        with Image.open(tmp_path / row["image"]) as im:
            b = np.asarray(im, dtype=np.float32)
        # Same pixels up to encoder differences between library versions.
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0, row["image"]
        assert load_image(path).mode == "RGB"
    assert {"RGB", "L", "RGBA", "P"} <= modes


def test_samples_are_disjoint_from_the_demo_model_sets() -> None:
    from training.demo_model import DemoConfig

    d = DemoConfig()
    assert synth.SAMPLE_SEED not in (d.head_seed, d.pretrain_seed, d.pretrain_seed + 1)
    assert d.head_seed not in (d.pretrain_seed, d.pretrain_seed + 1)


def test_parallel_generation_writes_the_same_set(tmp_path: Path) -> None:
    cfg = SynthConfig(n=260, seed=3)  # two work units of 250
    generate(tmp_path / "one", cfg)
    generate(tmp_path / "two", SynthConfig(n=260, seed=3), workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
