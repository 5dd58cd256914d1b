"""The one preprocessing path: safe decode, and parity with open_clip's own transform on real photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dangerclip.card import PreprocessConfig
from dangerclip.preprocess import (
    ImageError,
    decode_image,
    mask_to_grid,
    preprocess,
    preprocess_batch,
    resized_size,
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
