"""Property-based fuzzing of the decoder: one terminal outcome per input, in bounded memory.

Whatever bytes arrive — real small images of every accepted format (and of refused ones) with bytes flipped,
overwritten, inserted, deleted, duplicated or cut, two files spliced, headers claiming other sizes, random bytes —
``decode_image`` either returns an RGB image of at most ``max_pixels`` that ``preprocess`` turns into a finite
model input, or raises ``ImageError`` with one of the documented reasons. Never another exception, never a hang
(each example has a deadline), and a reservation taken is always given back. Then the memory side: a 40 MP
16-bit PNG, the issue's example, decoded in a fresh process within a bound the old decoder was 3x over.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.preprocess import ALLOWED_FORMATS, IMAGE_ERROR_REASONS, ImageError, decode_image, preprocess

REPO = Path(__file__).resolve().parents[2]
CFG = PreprocessConfig()
MAX_PIXELS = 1 << 20
"""Small, so mutated headers that claim more are refused and every decode takes milliseconds."""
MAX_BYTES = 1 << 20

FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=10),  # milliseconds a decode, seconds on a loaded runner; it catches hangs
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------------------- seeds
def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rle8_bmp(w: int, h: int) -> bytes:
    """An RLE8 BMP (Pillow writes only uncompressed ones): Pillow's Python RLE decoder is fuzzed too."""
    row = b"".join(bytes((min(255, w - x), x % 256)) for x in range(0, w, 7)) + b"\x00\x00"
    pixels = row * h + b"\x00\x01"
    palette = b"".join(bytes((i, 255 - i, i // 2, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def _seeds() -> dict[str, bytes]:
    """Small real files of every accepted format, in the modes and options their decoders branch on."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (24, 40, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65536, (24, 40), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6
    p_t = rgb.convert("P")
    p_t.info["transparency"] = 3
    frames = [Image.new("RGB", (20, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]

    def animated(fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=40, **kw)
        return buf.getvalue()

    return {
        "jpeg-baseline": _encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True, subsampling=0),
        "jpeg-grey": _encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "png-rgba": _encode(rgba, "PNG"),
        "png-la": _encode(rgba.convert("LA"), "PNG"),
        "png-p-transparency": _encode(p_t, "PNG"),
        "png-16bit": _encode(grey16, "PNG"),
        "png-1bit": _encode(rgb.convert("1"), "PNG"),
        "png-optimized": _encode(rgb, "PNG", optimize=True),
        "png-exif": _encode(rgb, "PNG", exif=exif.tobytes()),
        "png-animated": animated("PNG"),
        "gif": _encode(rgb.convert("P"), "GIF"),
        "gif-animated": animated("GIF", loop=0, disposal=2),
        "webp-lossy": _encode(rgb, "WEBP", quality=50),
        "webp-lossless-rgba": _encode(rgba, "WEBP", lossless=True),
        "webp-animated": animated("WEBP"),
        "bmp-rgb": _encode(rgb, "BMP"),
        "bmp-p": _encode(rgb.convert("P"), "BMP"),
        "bmp-1bit": _encode(rgb.convert("1"), "BMP"),
        "bmp-rle8": _rle8_bmp(40, 24),
        "tiff-rgb-deflate": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-lzw-rgba": _encode(rgba, "TIFF", compression="tiff_lzw"),
        "tiff-float32": _encode(Image.fromarray(rng.normal(0, 9, (24, 40)).astype(np.float32)), "TIFF"),
        "tiff-int32": _encode(Image.fromarray(rng.integers(-9, 99_999, (24, 40), dtype=np.int32)), "TIFF"),
        "tiff-16bit": _encode(grey16, "TIFF"),
        "tiff-cmyk-packbits": _encode(rgb.convert("CMYK"), "TIFF", compression="packbits"),
        "tiff-g4": _encode(rgb.convert("1"), "TIFF", compression="group4"),
        "tiff-multipage": animated("TIFF"),
    }


def _refused() -> dict[str, bytes]:
    """Formats Pillow reads but the allow-list refuses."""
    rgb = Image.new("RGB", (24, 16), (9, 99, 199))
    out = {fmt: _encode(rgb, fmt) for fmt in ("ICO", "PPM", "PCX", "TGA", "SGI", "DDS", "QOI")}
    out["XBM"] = _encode(rgb.convert("1"), "XBM")
    out["EPS"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 24 16\n" + b"0 0 moveto\n" * 4
    return out


SEEDS = _seeds()
REFUSED = _refused()
ALL = {**SEEDS, **{f"refused-{k}": v for k, v in REFUSED.items()}}


# ---------------------------------------------------------------------------- the contract
@contextmanager
def _tracked(log: list[int], held: list[int], pixels: int) -> Iterator[None]:
    log.append(pixels)
    held.append(pixels)
    try:
        yield
    finally:
        held.remove(pixels)


def check_one_outcome(data: bytes, *, min_side: int | None = None, formats: Any = ALLOWED_FORMATS) -> str:
    """Decode ``data`` and assert the contract; returns the outcome (``ok`` or the reason)."""
    asked: list[int] = []
    held: list[int] = []
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            try:
                out = decode_image(
                    data,
                    max_pixels=MAX_PIXELS,
                    max_bytes=MAX_BYTES,
                    formats=formats,
                    min_side=min_side,
                    reserve=lambda n: _tracked(asked, held, n),
                )
            finally:
                # Warnings whose text a file chooses would each be remembered by the process for good.
                assert [str(w.message) for w in shown] == []
    except ImageError as e:
        assert e.reason in IMAGE_ERROR_REASONS, e.reason
        outcome = e.reason
    else:
        assert out.mode == "RGB" and out.width >= 1 and out.height >= 1
        # Pillow's JPEG plugin names multi-picture JPEGs MPO.
        assert formats is None or out.format in (*formats, *(("MPO",) if "JPEG" in formats else ())), out.format
        assert out.width * out.height <= MAX_PIXELS
        sw, sh = out.info["source_size"]
        assert 0 < sw * sh <= MAX_PIXELS
        if min_side is not None:
            assert min(out.size) >= min(min_side, sw, sh)
        x = preprocess(out, CFG)
        assert x.shape == (3, CFG.image_size, CFG.image_size) and x.dtype == np.float32
        assert np.isfinite(x).all()
        outcome = "ok"
    # At most one reservation, of a pixel count within the limit, and never left held.
    assert len(asked) <= 1 and all(0 < n <= MAX_PIXELS for n in asked), asked
    assert held == []
    return outcome


def test_every_seed_decodes_and_every_refused_format_is_not_an_image():
    for name, data in SEEDS.items():
        assert check_one_outcome(data) == "ok", name
        assert check_one_outcome(data, min_side=8) == "ok", name
    for name, data in REFUSED.items():
        assert check_one_outcome(data) == "not_an_image", name


# ---------------------------------------------------------------------------- strategies
def _positions(data: bytes) -> st.SearchStrategy[int]:
    """A byte position, half the time within the first 512 bytes, where the headers a parser branches on are."""
    n = max(1, len(data))
    return st.integers(0, min(n, 512) - 1) | st.integers(0, n - 1)


@st.composite
def mutated(draw: st.DrawFn, pool: dict[str, bytes] = ALL) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(pool.items())))[1])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "duplicate", "truncate")))
        i = draw(_positions(bytes(data)))
        if op == "flip" and data:
            data[i % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            # Boundary values that lengths, counts and sizes trip over.
            data[i % len(data)] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)) | st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 256))]
        elif op == "duplicate" and data:
            j = i + draw(st.integers(1, 512))
            data[j:j] = data[i:j]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """One file's head on another's tail: valid headers in front of foreign data."""
    a = draw(st.sampled_from(sorted(ALL)))
    b = draw(st.sampled_from(sorted(ALL)))
    i = draw(st.integers(0, len(ALL[a])))
    j = draw(st.integers(0, len(ALL[b])))
    return ALL[a][:i] + ALL[b][j:]


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


@st.composite
def claiming_another_size(draw: st.DrawFn) -> bytes:
    """A real file whose header says another width and height (checksums fixed where there are any)."""
    w = draw(st.integers(0, 70_000) | st.sampled_from((1, 2, 1023, 1024, 1025, 65535, 65536, 2**31 - 1)))
    h = draw(st.integers(0, 70_000) | st.sampled_from((1, 2, 1023, 1024, 1025, 65535, 65536, 2**31 - 1)))
    kind = draw(st.sampled_from(("png", "bmp", "gif", "jpeg", "webp")))
    if kind == "png":
        data = SEEDS[draw(st.sampled_from(("png-rgba", "png-16bit", "png-p-transparency", "png-1bit")))]
        ihdr = struct.pack(">II", w, h) + data[24:29]
        return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]
    if kind == "bmp":
        data = SEEDS[draw(st.sampled_from(("bmp-rgb", "bmp-p", "bmp-rle8")))]
        sign = draw(st.sampled_from((1, -1)))
        return data[:18] + struct.pack("<ii", min(w, 2**31 - 1), sign * min(h, 2**31 - 1)) + data[26:]
    if kind == "gif":
        data = SEEDS[draw(st.sampled_from(("gif", "gif-animated")))]
        return data[:6] + struct.pack("<HH", w % 65536, h % 65536) + data[10:]
    if kind == "jpeg":
        data = SEEDS["jpeg-baseline"]
        sof = data.find(b"\xff\xc0")
        return data[: sof + 5] + struct.pack(">HH", h % 65536, w % 65536) + data[sof + 9 :]
    data = SEEDS["webp-lossy"]  # VP8 frame header: 14-bit sizes
    return data[:26] + struct.pack("<HH", w % 16384, h % 16384) + data[30:]


# ---------------------------------------------------------------------------- properties
@FUZZ
@given(data=mutated(), min_side=st.none() | st.sampled_from((1, 8, 20)))
def test_mutated_files_have_one_terminal_outcome(data: bytes, min_side: int | None):
    check_one_outcome(data, min_side=min_side)


@FUZZ
@given(data=spliced())
def test_spliced_files_have_one_terminal_outcome(data: bytes):
    check_one_outcome(data)


@FUZZ
@given(data=claiming_another_size(), min_side=st.none() | st.just(8))
def test_headers_claiming_any_size_have_one_terminal_outcome(data: bytes, min_side: int | None):
    check_one_outcome(data, min_side=min_side)


@settings(FUZZ, max_examples=100)
@given(
    data=st.binary(max_size=4096)
    | st.builds(
        lambda p, b: p + b,
        st.sampled_from(
            (
                b"\x89PNG\r\n\x1a\n",
                b"\xff\xd8\xff",
                b"GIF89a",
                b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                b"BM",
                b"II*\x00",
                b"MM\x00*",
            )
        ),
        st.binary(max_size=2048),
    )
)
def test_random_bytes_have_one_terminal_outcome(data: bytes):
    check_one_outcome(data)


@settings(FUZZ, max_examples=100)
@given(data=mutated(pool={f"refused-{k}": v for k, v in REFUSED.items()}))
def test_refused_formats_stay_refused_whatever_their_bytes(data: bytes):
    # check_one_outcome asserts that whatever decodes is of an accepted format (a mangled ICO whose header is cut
    # away may leave the PNG inside it); with every format accepted the same bytes reach the other parsers too
    # (but EPS, which runs Ghostscript where it is installed).
    check_one_outcome(data)
    Image.init()
    check_one_outcome(data, formats=sorted(set(Image.OPEN) - {"EPS"}))


# ---------------------------------------------------------------------------- bounded memory
def _bench() -> Any:
    """bench/decode_memory.py: its worst-case generators and its fresh-process RSS measurement."""
    spec = importlib.util.spec_from_file_location("decode_memory", REPO / "bench" / "decode_memory.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "full_mb", "reduced_mb"),
    [
        # Measured: 255 and 87 MB (the old decoder: 1041); 345 and 181 MB (old: 800).
        ("png16-grey", 400, 150),
        ("png16-rgba", 500, 260),
    ],
)
def test_a_40_megapixel_16_bit_png_decodes_in_bounded_memory(case, full_mb, reduced_mb, tmp_path):
    bench = _bench()
    path = tmp_path / case
    bench.CASES[case](path, 8000, 5000)
    assert path.stat().st_size < 1_000_000  # a decompression bomb: tiny file, 40 MP
    full = bench.measure([path], "new", path, 40_000_000, None)
    reduced = bench.measure([path], "new", path, 40_000_000, 448)
    assert "peak_mb" in full and "peak_mb" in reduced, (full, reduced)
    assert full["peak_mb"] < full_mb, full
    assert reduced["peak_mb"] < reduced_mb, reduced
