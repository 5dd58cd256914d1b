"""The one preprocessing path: safe decode, and parity with open_clip's own transform on real photos."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

import dangerclip.runtime.preprocess as pp
from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.preprocess import (
    ALLOWED_FORMATS,
    ImageError,
    check_formats,
    decode_image,
    mask_to_grid,
    preprocess,
    preprocess_batch,
    resized_size,
    to_rgb,
)

CFG = PreprocessConfig()


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _real_photos() -> list[Path]:
    mpl = pytest.importorskip("matplotlib")
    d = Path(mpl.get_data_path()) / "sample_data"
    return [p for p in (d / "grace_hopper.jpg", d / "Minduka_Present_Blue_Pack.png") if p.is_file()]


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (1024, 700), (97, 131), (224, 224), (225, 400)])
def test_matches_open_clip_transform_on_real_photos(size, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    photos = _real_photos()
    assert photos, "matplotlib's sample photos are missing"
    tf = open_clip.image_transform(224, is_train=False)
    std = np.asarray(CFG.std, np.float32)[:, None, None]
    for photo in photos:
        src = Image.open(photo).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        path = tmp_path / f"{photo.stem}_{size[0]}x{size[1]}.jpg"
        src.save(path, quality=92)
        data = path.read_bytes()
        ours = preprocess(decode_image(data), CFG)
        theirs = tf(Image.open(io.BytesIO(data))).numpy()
        assert ours.shape == theirs.shape == (3, 224, 224)
        # Compare in pixel units: at most 1/255 apart anywhere.
        assert np.abs((ours - theirs) * std).max() <= 1 / 255 + 1e-6


def test_resized_size_follows_torchvision_rule():
    assert resized_size(640, 480, 224) == (298, 224)
    assert resized_size(300, 500, 224) == (224, 373)
    assert resized_size(224, 224, 224) == (224, 224)


def test_modes_become_rgb():
    rgb = Image.new("RGB", (50, 40), (10, 200, 30))
    cases = {
        "L": rgb.convert("L"),
        "CMYK": rgb.convert("CMYK"),
        "P": rgb.convert("P"),
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
    }
    for mode, im in cases.items():
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        out = decode_image(_encode(im, fmt))
        assert out.mode == "RGB" and out.size == (50, 40), mode


def test_transparent_pixels_become_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = np.asarray(decode_image(_encode(im, "PNG")))
    assert (out == 255).all()


def test_16bit_greyscale_is_scaled_not_clipped():
    a = np.full((16, 16), 65535 // 2, np.uint16)
    out = np.asarray(decode_image(_encode(Image.fromarray(a), "PNG")))
    assert 120 <= out.mean() <= 135


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = decode_image(_encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)


def test_animation_gives_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(decode_image(buf.getvalue()))
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 10))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_an_image"),
        (b"hello, I am text", "not_an_image"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not_an_image"),
        (_png_header_claiming(50_000, 50_000), "too_many_pixels"),
    ],
)
def test_bad_inputs_have_reasons(data, reason):
    with pytest.raises(ImageError) as e:
        decode_image(data, max_pixels=40_000_000)
    assert e.value.reason == reason


def test_truncated_jpeg_is_a_decode_error():
    data = _encode(Image.new("RGB", (300, 300), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "decode_error"


def test_byte_limit():
    data = _encode(Image.new("RGB", (30, 30)), "PNG")
    with pytest.raises(ImageError) as e:
        decode_image(data, max_bytes=10)
    assert e.value.reason == "too_large"


def test_batch_shape_and_normalisation():
    ims = [Image.new("RGB", (300, 200), (255, 255, 255)), Image.new("RGB", (100, 400), (0, 0, 0))]
    b = preprocess_batch(ims, CFG)
    assert b.shape == (2, 3, 224, 224) and b.dtype == np.float32
    np.testing.assert_allclose(b[0, :, 0, 0], (1 - np.array(CFG.mean)) / np.array(CFG.std), rtol=1e-5)
    np.testing.assert_allclose(b[1, :, 0, 0], -np.array(CFG.mean) / np.array(CFG.std), rtol=1e-5)


def test_mask_to_grid_follows_the_crop():
    # A 448x224 mask (landscape): the centre crop keeps columns 112..336 of the resized 448-wide image.
    m = np.zeros((224, 448), np.uint8)
    m[:, :112] = 255  # entirely outside the crop
    m[0:16, 112:128] = 255  # exactly the top-left patch of the crop
    g = mask_to_grid(m, (14, 14), CFG)
    assert g.shape == (14, 14)
    assert g[0, 0] > 0.9
    assert g[1:, :].max() < 0.1 and g[:, 1:].max() < 0.1


# ------------------------------------------------------------------------------------------ bounded decoding
LEVELS = np.asarray(CFG.std, np.float32)[:, None, None] * 255
"""Tensor units → 8-bit levels."""


def _reference_to_rgb(img: Image.Image) -> Image.Image:
    """The whole-image float64 conversion that ``to_rgb`` replaced (commit 6af608e), kept as the reference its
    tile-by-tile conversion must match byte for byte."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _mode_zoo(w: int, h: int) -> dict[str, Image.Image]:
    """Random-content images in every mode a decoder can hand over."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    zoo = {m: rgba.convert(m) for m in ("L", "LA", "PA", "RGBa")}
    zoo |= {m: rgb.convert(m) for m in ("1", "P", "CMYK", "YCbCr", "HSV", "RGBX")}
    zoo["RGB"], zoo["RGBA"] = rgb, rgba
    zoo["P+transparency"] = rgb.convert("P")
    zoo["P+transparency"].info["transparency"] = 5
    zoo["I;16"] = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    zoo["I;16B"] = Image.frombytes("I;16B", (w, h), rng.integers(0, 256, 2 * w * h, dtype=np.uint8).tobytes())
    zoo["I wide"] = Image.fromarray(rng.integers(-1000, 100_000, (h, w), dtype=np.int32))
    zoo["I narrow"] = Image.fromarray(rng.integers(0, 200, (h, w), dtype=np.int32))
    zoo["F"] = Image.fromarray(rng.normal(0, 50, (h, w)).astype(np.float32))
    zoo["F flat"] = Image.fromarray(np.full((h, w), 3.5, np.float32))
    return zoo


@pytest.mark.parametrize("tile", [1 << 20, 997, 64])
def test_conversion_is_byte_identical_to_the_whole_image_float_reference(tile, monkeypatch):
    monkeypatch.setattr(pp, "_TILE_PIXELS", tile)  # many tiles, ragged at the edges
    for mode, im in _mode_zoo(97, 61).items():
        ours, ref = np.asarray(to_rgb(im)), np.asarray(_reference_to_rgb(im))
        assert ours.shape == ref.shape == (61, 97, 3), mode
        assert np.array_equal(ours, ref), mode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_tile_by_tile_matches_whole_image_transpose(orientation, monkeypatch):
    monkeypatch.setattr(pp, "_TILE_PIXELS", 300)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im = _mode_zoo(37, 23)["RGBA"]
    data = _encode(im, "PNG", exif=exif.tobytes())
    ref = _reference_to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    out = decode_image(data)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    assert out.info["source_size"] == out.size


@pytest.mark.parametrize(
    ("name", "image", "fmt"),
    [
        ("16-bit PNG", Image.fromarray((np.arange(3_000_000) % 65536).astype(np.uint16).reshape(1500, 2000)), "PNG"),
        ("float32 TIFF", Image.fromarray(np.linspace(-5, 5, 3_000_000, dtype=np.float32).reshape(1500, 2000)), "TIFF"),
        ("int32 TIFF", Image.fromarray((np.arange(3_000_000, dtype=np.int32) * 7).reshape(1500, 2000)), "TIFF"),
    ],
)
def test_no_full_size_float_copy(name, image, fmt):
    # tracemalloc sees numpy's buffers (not Pillow's): a full-size float64 copy would be 24 MB here.
    data = _encode(image, fmt)
    tracemalloc.start()
    try:
        out = decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.size == (2000, 1500)
    assert peak < 0.75 * image.width * image.height * 8, f"{name}: {peak / 1e6:.1f} MB traced"


def _webp_and_ico() -> dict[str, bytes]:
    im = Image.new("RGB", (32, 32), (200, 10, 10))
    return {
        "WEBP": _encode(im, "WEBP"),
        "ICO": _encode(im, "ICO"),
        "PPM": _encode(im, "PPM"),
        "PCX": _encode(im, "PCX"),
        "TGA": _encode(im, "TGA"),
    }


def test_format_allow_list():
    assert set(ALLOWED_FORMATS) == {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}
    files = _webp_and_ico()
    for fmt in ("ICO", "PPM", "PCX", "TGA"):
        with pytest.raises(ImageError) as e:
            decode_image(files[fmt])
        assert e.value.reason == "not_an_image", fmt
        assert "accepted: JPEG, PNG, GIF, WEBP, BMP, TIFF" in str(e.value), fmt
    # Where a refused format has a signature, the message names it.
    with pytest.raises(ImageError, match="signature is ICO's"):
        decode_image(files["ICO"])
    # None accepts every format Pillow reads; a narrower list refuses the rest. Names are case-insensitive.
    assert decode_image(files["ICO"], formats=None).size == (32, 32)
    assert decode_image(files["WEBP"], formats=["webp"]).size == (32, 32)
    with pytest.raises(ImageError) as e:
        decode_image(files["WEBP"], formats=["PNG"])
    assert e.value.reason == "not_an_image" and "accepted: PNG" in str(e.value)


def test_unknown_format_names_are_a_configuration_error():
    assert check_formats(["jpeg", "PNG", "JPEG"]) == ("JPEG", "PNG")
    with pytest.raises(ValueError, match="unknown image format"):
        check_formats(["PNG", "HEIC"])
    with pytest.raises(ValueError, match="unknown image format"):
        decode_image(_encode(Image.new("RGB", (4, 4)), "PNG"), formats=["JPG"])


def test_pillows_own_bomb_limit_still_refuses(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError) as e:
        decode_image(_encode(Image.new("RGB", (40, 40)), "PNG"), max_pixels=10**9)
    assert e.value.reason == "too_many_pixels"


def _jpeg_with_exif_tag_beyond_the_file(tag: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", tag, 2, 1000, 26) + struct.pack("<I", 0)
    return _encode(Image.new("RGB", (8, 8)), "JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)


def test_metadata_warnings_whose_text_the_file_chooses_are_not_shown_or_remembered():
    # Python keeps every warning text it has shown, forever: bombs of new sizes, EXIF tags of new numbers would
    # grow the process without bound. Bombs are refused, broken metadata skipped, and nothing is warned.
    import warnings

    import PIL.Image
    import PIL.TiffImagePlugin

    registries = [getattr(m, "__warningregistry__", {}) for m in (PIL.Image, PIL.TiffImagePlugin)]
    sizes = [len(r) for r in registries]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        for i in range(40):
            with pytest.raises(ImageError) as e:
                decode_image(_png_header_claiming(10_000, 9_000 + i), max_pixels=10**9)
            assert e.value.reason == "too_many_pixels"
            assert decode_image(_jpeg_with_exif_tag_beyond_the_file(0x1000 + i)).size == (8, 8)
    assert [str(w.message) for w in shown] == []
    assert [len(r) for r in registries] <= [n + 1 for n in sizes]


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were():
    import threading
    import warnings

    filters = list(warnings.filters)
    data = [_png_header_claiming(10_000, 9_000 + i) for i in range(20)] + [_encode(Image.new("RGB", (64, 64)), "PNG")]

    def work() -> None:
        for _ in range(5):
            for d in data:
                try:
                    decode_image(d, max_pixels=10**9)
                except ImageError:
                    pass

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert warnings.filters == filters


def test_the_result_is_a_plain_image_not_the_decoder():
    # A WebP image object keeps two full-size canvases and a copy of the pixels while it lives.
    out = decode_image(_webp_and_ico()["WEBP"])
    assert type(out) is Image.Image and out.format == "WEBP"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_min_side_reduces_but_never_below(fmt):
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1100, 2100, 3), dtype=np.uint8))
    data = _encode(im.convert("P") if fmt == "GIF" else im, fmt)
    for min_side in (100, 224, 500, 1100):
        out = decode_image(data, min_side=min_side)
        assert out.mode == "RGB" and min(out.size) >= min_side, (min_side, out.size)
        assert out.info["source_size"] == (2100, 1100)
        if min_side <= 500:
            assert min(out.size) < 1100
    small = _encode(Image.new("RGB", (300, 200), (9, 9, 9)), fmt)
    assert np.array_equal(np.asarray(decode_image(small, min_side=224)), np.asarray(decode_image(small)))
    with pytest.raises(ValueError):
        decode_image(small, min_side=0)


def _sharp_test_card(size: tuple[int, int]) -> Image.Image:
    """Thin diagonal lines and a circle: any misplacement of the reduced image shows up as large differences."""
    im = Image.new("RGB", (1351, 907), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for x in range(0, 1351, 23):
        d.line([(x, 0), (x + 300, 906)], fill=(x % 255, 0, 120), width=3)
    d.ellipse([400, 200, 950, 700], outline=(0, 0, 0), width=9)
    return im.resize(size)


@pytest.mark.parametrize("size", [(1351, 907), (1351, 1347), (2001, 1345)])
def test_reduced_decode_keeps_the_full_images_geometry(size):
    # Sides that the reduction factor does not divide: the last row and column stand for part of a pixel.
    data = _encode(_sharp_test_card(size), "PNG")
    full = preprocess(decode_image(data), CFG)
    reduced = decode_image(data, min_side=448)
    assert "source_box" in reduced.info
    d = np.abs(full - preprocess(reduced, CFG)) * LEVELS
    assert d.mean() < 1.5 and d.max() < 40
    # Resized from its own size instead, the same pixels land up to a pixel away: many times worse.
    reduced.info.pop("source_box")
    assert (np.abs(full - preprocess(reduced, CFG)) * LEVELS).mean() > 3


@pytest.mark.parametrize("orientation", [1, 6, 3])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_reduced_decode_of_a_real_photo_is_close_to_the_full_decode(fmt, orientation):
    photos = _real_photos()
    if not photos:
        pytest.skip("matplotlib's sample photos are missing")
    src = Image.open(photos[0]).convert("RGB")
    big = src.resize((src.width * 3 + 7, src.height * 3 + 5), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(big, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt != "PNG" else {}))
    full, reduced = decode_image(data), decode_image(data, min_side=448)
    assert reduced.info["source_size"] == full.size and min(reduced.size) >= 448
    assert reduced.width * reduced.height * 3 <= full.width * full.height
    d = np.abs(preprocess(full, CFG) - preprocess(reduced, CFG)) * LEVELS
    assert d.max() <= 16 and d.mean() <= 1.0, (d.max(), d.mean())
