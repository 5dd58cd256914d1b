"""Rows, splits, masks and augmented views; ``make_dataset`` is shared by the other training tests."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.manifest import ManifestError, ManifestRow
from dangerclip.runtime.preprocess import mask_to_grid, preprocess
from training import data as D


def make_dataset(
    root: Path,
    n: int = 24,
    seed: int = 0,
    size: tuple[int, int] = (96, 80),
    splits: bool = True,
    masks: bool = True,
    two_categories: bool = False,
) -> Path:
    """Write ``n`` small images (half with a dark bar "weapon" and its exact mask, half with a red disc)
    and a JSONL manifest; returns the manifest path. ``two_categories`` labels ``weapon`` and ``disc``
    (discs have no mask)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = size
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(120, 255, 3)))
        d = ImageDraw.Draw(im)
        pos = i % 2 == 0
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = [x0, y0, x0 + w // 3, y0 + h // 6]
        rec: dict[str, object] = {"image": f"img_{i:03d}.png", "label": int(pos)}
        if two_categories:
            rec = {"image": rec["image"], "labels": {"weapon": int(pos), "disc": int(not pos)}}
        if pos:
            d.rectangle(box, fill=(15, 15, 15))
            if masks:
                m = Image.new("L", (w, h), 0)
                ImageDraw.Draw(m).rectangle(box, fill=255)
                m.save(root / f"mask_{i:03d}.png")
                rec["mask"] = {"weapon": f"mask_{i:03d}.png"} if two_categories else f"mask_{i:03d}.png"
        else:
            d.ellipse([x0, y0, x0 + h // 4, y0 + h // 4], fill=(210, 30, 30))
        im.save(root / rec["image"])  # type: ignore[operator]
        if splits:
            rec["split"] = ("train", "train", "train", "train", "val", "test")[(i // 2) % 6]
        lines.append(json.dumps(rec))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_rows_reads_manifest_and_folder(tmp_path: Path) -> None:
    man = make_dataset(tmp_path / "ds", n=6)
    rows = D.load_rows(man, ["weapon"])
    assert [r.labels["weapon"] for r in rows] == [1, 0, 1, 0, 1, 0]
    assert rows[0].masks["weapon"].endswith("mask_000.png")
    folder = tmp_path / "folder"
    for cat in ("weapon", "negative"):
        (folder / cat).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(folder / cat / "a.jpg")
    frows = D.load_rows(folder, ["weapon"])
    assert sorted(r.labels["weapon"] for r in frows) == [0, 1]


def test_bad_manifest_lists_every_bad_row_with_line_numbers(tmp_path: Path) -> None:
    man = make_dataset(tmp_path, n=2)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    lines = man.read_text().splitlines()
    lines += [
        json.dumps({"image": "missing.png", "label": 1}),  # line 3: missing file
        json.dumps({"image": "broken.png", "label": 0}),  # line 4: unreadable image
        json.dumps({"image": "img_000.png", "label": "tank"}),  # line 5: unknown label
        "{not json",  # line 6
    ]
    man.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as e:
        D.load_rows(man, ["weapon"])
    issues = {i.line: i.message for i in e.value.issues}
    assert sorted(issues) == [3, 4, 5, 6]
    assert "not found" in issues[3]
    assert "unreadable image" in issues[4]
    assert "unknown label" in issues[5]
    assert "line 3:" in str(e.value)
    # Only with the explicit flag are they skipped.
    assert len(D.load_rows(man, ["weapon"], skip_bad=True)) == 2


def test_bad_folder_image_is_reported(tmp_path: Path) -> None:
    (tmp_path / "weapon").mkdir()
    (tmp_path / "weapon" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match="unreadable image"):
        D.load_rows(tmp_path, ["weapon"])


def test_assign_splits_keeps_given_and_hashes_the_rest() -> None:
    rows = [ManifestRow(image=f"/x/{i}.png", labels={"w": i % 2}, id=f"{i}") for i in range(400)]
    rows[0].split = "test"
    s = D.assign_splits(rows)
    assert 0 in s["test"]
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(400))
    assert 260 < len(s["train"]) < 380 and len(s["val"]) > 15
    assert D.assign_splits(rows) == s  # deterministic


def test_row_mask_grid_valid_rules(tmp_path: Path) -> None:
    cfg = PreprocessConfig(image_size=32)
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, :20] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    pos = ManifestRow(image="i", labels={"gun": 1, "knife": 0, "bat": 1}, masks={"gun": str(tmp_path / "m.png")})
    m, valid = D.row_mask_grid(pos, ["gun", "knife", "bat"], (40, 40), (2, 2), cfg)
    # gun: masked; knife: negative -> exact empty mask; bat: positive without a mask -> not supervised.
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(m[0], mask_to_grid(mask, (2, 2), cfg).reshape(-1))
    assert m[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=0.05)
    assert not m[1].any()
    with pytest.raises(ValueError, match="mask"):
        D.load_mask(tmp_path / "m.png", (41, 40))


def test_render_views_plain_view_is_the_served_input_and_flip_is_exact() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    cfg = PreprocessConfig(image_size=32)
    recipe = D.ViewRecipe(flip=True, color_views=2)
    assert recipe.views() == [(0, False), (1, False), (2, False), (0, True), (1, True), (2, True)]
    v = D.render_views(img, "a", cfg, recipe)
    assert v.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(v[0], preprocess(img, cfg))
    np.testing.assert_array_equal(v[3], v[0][:, :, ::-1])
    np.testing.assert_array_equal(v[4], v[1][:, :, ::-1])
    assert not np.allclose(v[1], v[0])
    # Seeded by id: same id -> same views, other id -> other colours.
    np.testing.assert_array_equal(D.render_views(img, "a", cfg, recipe), v)
    assert not np.allclose(D.render_views(img, "b", cfg, recipe)[1], v[1])


def test_color_jitter_changes_colour_not_geometry() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:8, 4:12] = (200, 40, 40)
    rgb[~np.any(rgb, -1)] = (90, 140, 200)
    seen = []
    for seed in range(12):
        out = D.color_jitter(rgb, np.random.default_rng(seed), D.ViewRecipe())
        assert out.shape == rgb.shape and out.dtype == np.uint8
        # The object stays where it was: its pixels still differ from the background's.
        assert np.abs(out[5, 5].astype(int) - out[0, 0].astype(int)).sum() > 20
        seen.append(out[5, 5].tolist())
    assert len({tuple(c) for c in seen}) > 6  # the draws really vary
    hsv_red = colorsys.rgb_to_hsv(*(np.array(seen[0]) / 255.0))
    assert 0.0 <= hsv_red[0] <= 1.0


def test_color_jitter_turns_a_share_of_views_grey_as_a_greyscale_upload_decodes() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:8, 4:12] = (200, 40, 40)
    rgb[~np.any(rgb, -1)] = (90, 140, 200)

    def grey(out: np.ndarray) -> bool:
        return bool((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all())

    never = [D.color_jitter(rgb, np.random.default_rng(s), D.ViewRecipe(grayscale=0.0)) for s in range(40)]
    always = [D.color_jitter(rgb, np.random.default_rng(s), D.ViewRecipe(grayscale=1.0)) for s in range(40)]
    half = [D.color_jitter(rgb, np.random.default_rng(s), D.ViewRecipe(grayscale=0.5)) for s in range(40)]
    assert not any(grey(o) for o in never) and all(grey(o) for o in always)
    assert 8 <= sum(grey(o) for o in half) <= 32
    # The grey is the luma a greyscale file decodes to, of the same jittered colours (drawn first).
    for a, b in zip(never, always, strict=True):
        expect = np.asarray(Image.fromarray(a, "RGB").convert("L"))
        np.testing.assert_array_equal(b[..., 0], expect)
    # The grey views still keep the object apart from its background.
    assert all(abs(int(o[5, 5, 0]) - int(o[0, 0, 0])) > 0 for o in always)


def test_train_config_rejects_a_grayscale_share_outside_zero_to_one() -> None:
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="grayscale"):
        TrainConfig(data="x.jsonl", grayscale=1.5).validate()


def test_a_cut_out_mask_is_read_by_its_alpha_not_composited_on_white(tmp_path):
    from PIL import Image

    from training.data import load_mask

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: composited on white, the whole image would be "danger"
    rgba[5:10, 8:20, 3] = 255  # the object: opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    m = load_mask(tmp_path / "cut.png", (30, 20))
    assert m.sum() == 5 * 12 and m[5:10, 8:20].all()
    # An opaque RGBA mask (white object on black) is read by its luminance, as before.
    opaque = np.zeros((20, 30, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[2:4, 2:6, :3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert load_mask(tmp_path / "opaque.png", (30, 20)).sum() == 2 * 4
