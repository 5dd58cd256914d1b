"""The one preprocessing path: safe decode and CLIP's transform in numpy and Pillow.

Training, export and serving all call these functions, so a served model sees exactly the pixels it was
trained on. No torch, no torchvision: the service imports this module.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, TiffTags, UnidentifiedImageError

from dangerclip.runtime.card import PreprocessConfig

DEFAULT_MAX_PIXELS = 40_000_000
"""Refuse images above this many pixels before decoding them (decompression bombs).

Measured (``bench/decode_memory.py``): one worst-case 40 MP image costs at most 0.65 GB to decode (WebP; 16-bit
PNG 0.26 GB, 0.09 GB with ``min_side``), against 1.04 GB for 16-bit PNG before decoding went tile by tile. What
bounds a service's memory is its decode budget (``service.budget.PixelBudget``), as long as this is no larger:
40 MP is above every camera's default output and, under the 64 MP budget a 2 GiB worker affords, leaves the
other decode thread room for ordinary photos while a largest image decodes."""

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
"""Pillow formats ``decode_image`` parses unless told otherwise. Every format is a parser exposed to untrusted
bytes, so the list is what cameras, phones, browsers and scanners produce, and what this project's folders and
tools already take (their suffix lists): JPEG (MPO, the multi-picture JPEG of some cameras, comes with it), PNG,
GIF, WebP, BMP and TIFF. Left out: formats no uploader sends, whose plugins see little use and little fuzzing
(EPS hands the file to Ghostscript; PSD, ICNS, ICO, FITS, SPIDER, PCX, TGA, XPM, ...), and AVIF and JPEG 2000,
large native decoders worth adding only when producers send them. TIFF is the one to drop first where producers
never send it: libtiff and its many codecs are the largest parser here."""

IMAGE_ERROR_REASONS = frozenset({"not_an_image", "too_many_pixels", "too_large", "decode_error"})
"""Every ``ImageError.reason``."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File suffixes taken as images when a folder is given instead of files (scoring, manifests, the demo)."""

_PARSE_LOCK = threading.Lock()
"""Held while Pillow parses headers and metadata (``Image.open``, ``getexif``: microseconds to a millisecond);
see ``_parsing``."""

_TILE_PIXELS = 1 << 20
"""Pixels converted to RGB at a time: every intermediate copy (float, RGBA, white background) is a tile of at
most this many pixels (8 MiB as float64), never the whole image."""

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

_I16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# 16-bit greyscale → 8 bits, the full range scaled rather than clipped: the float formula evaluated once for
# each of the 65536 values, so a lookup gives the same bytes as evaluating it per pixel without a float copy.
_LUT16 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation → the transposition that displays the image upright (as ``ImageOps.exif_transpose``)."""

_SWAPS_SIDES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)


class ImageError(ValueError):
    """An input that cannot become a model input.

    Attributes:
        reason: a stable machine-readable code (``not_an_image``, ``too_many_pixels``, ``too_large``,
            ``decode_error``) that the service puts on dead-letter records.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    formats: Sequence[str] | None = ALLOWED_FORMATS,
    min_side: int | None = None,
    reserve: Callable[[int], AbstractContextManager[object]] | None = None,
) -> Image.Image:
    """Decode encoded image bytes into an 8-bit RGB image, safely and in bounded memory.

    The format is checked against ``formats`` and the pixel count against ``max_pixels`` from the header, before
    any pixel is decoded. EXIF orientation is applied; CMYK, greyscale, palette, 16-bit, 32-bit and alpha images
    become RGB (alpha composited on white); animations give their first frame.

    Memory: the decoded image in its own mode and the decoder's own buffers (from ~0 for a baseline JPEG drawn
    small to 16 bytes a pixel for WebP: ``bench/decode_memory.py``), plus the RGB result (4 bytes a pixel) when
    it is full size. Conversions run a tile of at most ~1 M pixels at a time, so no full-size float, RGBA or
    background copy is ever made. With ``min_side`` a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself
    and other formats are box-reduced tile by tile, so the result is small too; ``preprocess`` of it differs from
    that of the full decode by a few 8-bit levels (real photos: at most 2 to 17, 0.1 to 0.7 on average, about what
    re-encoding the image as JPEG quality 90 does).

    Args:
        data: the encoded file.
        max_pixels: largest width × height accepted.
        max_bytes: largest encoded size accepted, if set.
        formats: Pillow format names accepted (``ALLOWED_FORMATS`` by default); anything else is
            ``not_an_image`` without its parser ever running. None accepts every format Pillow knows.
        min_side: if set, the image may be decoded at a reduced scale (an integer factor; for JPEG 2, 4 or 8) as
            long as its shortest side stays at least ``min_side``. None decodes at full size, pixel for pixel as
            before this option existed.
        reserve: if set, called as ``reserve(width * height)`` with the header's pixel count once the image is
            accepted and before any pixel is decoded; the context manager it returns is held for the whole
            decode (e.g. ``service.budget.PixelBudget.reserve``). Whatever it raises propagates unchanged.

    Returns:
        A loaded RGB ``PIL.Image``; ``format`` is the source's format and ``info["source_size"]`` its
        ``(width, height)`` as displayed (after orientation), before any reduction. A reduced image whose sides
        the factor does not divide also carries ``info["source_box"]``, which ``resize_and_crop`` uses to keep
        the full image's geometry.

    Raises:
        ImageError: with ``reason`` one of ``IMAGE_ERROR_REASONS``, for anything that is not a usable image.
        ValueError: ``formats`` names a format Pillow does not know, or ``min_side`` is below 1.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError("too_large", f"encoded image is {len(data)} bytes, limit is {max_bytes}")
    if not data:
        raise ImageError("not_an_image", "empty input")
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    allowed = None if formats is None else check_formats(formats)
    img = _open(data, allowed)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("decode_error", f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError("too_many_pixels", f"image is {w}x{h} = {w * h} pixels, limit is {max_pixels}")
    fmt = img.format
    with reserve(w * h) if reserve is not None else contextlib.nullcontext():
        try:
            # Rebinding drops the plugin object, and with it what it keeps beside the pixels.
            img, extent, method = _load(img, min_side)
            k = 1 if min_side is None else max(1, min(img.size) // min_side)
            out = _rgb(img, k, method)
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated or corrupt data surfaces as many types
            raise ImageError("decode_error", f"cannot decode image: {e}") from e
        reduced = (-(-img.width // k), -(-img.height // k))
    out.format = fmt
    swap = method in _SWAPS_SIDES
    out.info["source_size"] = (h, w) if swap else (w, h)
    ex, ey = extent[0] / k, extent[1] / k
    if (ex, ey) != reduced:
        # A reduction whose factor does not divide the sides leaves a last row and column that stand for less
        # than a pixel. Where the source's edges fall, so that resize_and_crop maps exactly the source's extent
        # and the geometry stays the full image's (without it a 1/3-pixel error costs up to 60 levels on edges).
        x, y = (0.0, 0.0) if method is None else _transposed_origin(method, 0, 0, ex, ey, *reduced)
        bw, bh = (ey, ex) if swap else (ex, ey)
        out.info["source_box"] = (out.size, (x, y, x + bw, y + bh))
    return out


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = ALLOWED_FORMATS,
    min_side: int | None = None,
) -> Image.Image:
    """``decode_image`` for a file on disk."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels=max_pixels, formats=formats, min_side=min_side)


@functools.lru_cache(maxsize=32)
def _checked_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    Image.init()
    names = tuple(dict.fromkeys(str(f).strip().upper() for f in formats))
    unknown = [f for f in names if f not in Image.OPEN]
    if unknown:
        raise ValueError(f"unknown image format(s) {unknown}; Pillow reads {sorted(Image.OPEN)}")
    return names


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Upper-cased, de-duplicated Pillow format names.

    Raises:
        ValueError: a name Pillow cannot read (the message lists those it can). Call it at start-up to fail
            fast on a misspelt setting.
    """
    return _checked_formats(tuple(formats))


@contextlib.contextmanager
def _parsing() -> Iterator[None]:
    """Pillow's warnings silenced, and its decompression-bomb warning made an error, while it parses metadata.

    Parsing broken headers and EXIF, Pillow warns with text the file chooses ("Expecting to read 123456 bytes",
    "Skipping tag 4242", "Image size (123456789 pixels) exceeds limit"), and Python remembers every warning text
    it has shown in the warning module's ``__warningregistry__`` for good: left alone, whoever sends images grows
    the process's memory without bound. Nothing is lost: a header Pillow warns about is skipped or refused. The
    bomb warning (an image between Pillow's ``MAX_IMAGE_PIXELS`` and twice that) refuses the image, as it always
    has. ``warnings.catch_warnings`` swaps the process's filter list, which is not thread-safe: hence the lock,
    around the short metadata steps only (a warning another thread raises during one is not shown). Decoding
    pixels warns about nothing that a file can vary (``tests/dangerclip/test_decode_fuzz.py`` checks that no
    decode warns at all).
    """
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _open(data: bytes, allowed: tuple[str, ...] | None) -> Image.Image:
    """Parse the header only (``Image.open`` is lazy)."""
    with _parsing():
        try:
            return Image.open(io.BytesIO(data), formats=allowed)
        except UnidentifiedImageError as e:
            raise ImageError("not_an_image", _unidentified(data, allowed)) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError("too_many_pixels", str(e)) from e
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken headers
            raise ImageError("decode_error", f"cannot read image header: {e}") from e


def _unidentified(data: bytes, allowed: tuple[str, ...] | None) -> str:
    if allowed is None:
        return "not a recognised image format"
    message = f"not an accepted image format (accepted: {', '.join(allowed)})"
    # Only the plugins' signature checks look at the bytes (16 of them, what Image.open reads); no parser runs.
    prefix = data[:16]
    for name, (_, accept) in sorted(Image.OPEN.items()):
        if name in allowed or accept is None:
            continue
        try:
            looks = accept(prefix) is True
        except Exception:  # noqa: BLE001 - a signature check that trips on a short prefix just does not match
            looks = False
        if looks:
            return f"{message}; its signature is {name}'s"
    return message


def _load(img: Image.Image, min_side: int | None) -> tuple[Image.Image, tuple[float, float], Image.Transpose | None]:
    """Decode the pixels. Returns them apart from the plugin object, the source's extent in their coordinates
    (its size unless JPEG drew it smaller), and the EXIF orientation's transposition."""
    extent: tuple[float, float] = img.size
    if min_side is not None:
        # libjpeg's DCT scaling (a no-op for other formats): the full-size image is never built at all.
        drawn = img.draft("RGB", (min_side, min_side))
        if drawn is not None:
            extent = drawn[1][2], drawn[1][3]
    if hasattr(img, "tag_v2"):
        # TIFF parses its EXIF and sub-IFDs while it loads pixels; parsed here first, load finds them done.
        with _parsing():
            exif = img.getexif()
            for group in TiffTags.TAGS_V2_GROUPS:
                if group in exif:
                    exif.get_ifd(group)
    # An animation is opened at its first frame, which is the one used: nothing to seek.
    img.load()
    with _parsing():
        method = _TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    # The same pixel memory in a plain Image. The plugin object keeps its file buffer and decoder state for as
    # long as it lives (WebP: two full-size canvases and a copy of the pixels, 3x the image), so it must not
    # outlive the load, let alone be returned.
    return img._new(img.im), extent, method


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB. Transparent pixels are composited on white; 16- and 32-bit greyscale is
    scaled from its full range. An RGB image is returned as it is; anything else is converted a tile at a time,
    never through a full-size float or RGBA copy."""
    return _rgb(img, 1, None)


def _rgb(img: Image.Image, k: int, method: Image.Transpose | None) -> Image.Image:
    """``img`` → RGB, box-reduced ``k`` times and transposed by ``method``, one tile at a time.

    Each tile is converted (a per-pixel operation, except for the range of 32-bit images, measured first), then
    reduced, then transposed and pasted where it lands in the result: with ``k == 1`` the result is the same,
    byte for byte, as converting the whole image at once.
    """
    if k == 1 and img.mode == "RGB":
        return img if method is None else img.transpose(method)
    w, h = img.size
    stats = _range(img)
    ow, oh = -(-w // k), -(-h // k)
    out = Image.new("RGB", (oh, ow) if method in _SWAPS_SIDES else (ow, oh))
    tw, th = _tile_shape(w, h, k)
    for y0 in range(0, h, th):
        for x0 in range(0, w, tw):
            tile = _tile_rgb(img, (x0, y0, min(x0 + tw, w), min(y0 + th, h)), k, stats)
            x, y = x0 // k, y0 // k
            if method is not None:
                tx, ty = _transposed_origin(method, x, y, tile.width, tile.height, ow, oh)
                x, y, tile = int(tx), int(ty), tile.transpose(method)
            out.paste(tile, (x, y))
    return out


def _tile_shape(w: int, h: int, k: int) -> tuple[int, int]:
    """(columns, rows) of a tile: whole rows when they fit in ``_TILE_PIXELS``, and multiples of ``k`` so each
    tile reduces to whole output pixels."""
    rows = max(k, _TILE_PIXELS // w // k * k)
    if rows >= h:
        return (w, h) if w * h <= _TILE_PIXELS else (max(k, _TILE_PIXELS // h // k * k), h)
    return (w, rows) if w * rows <= _TILE_PIXELS else (max(k, _TILE_PIXELS // rows // k * k), rows)


def _range(img: Image.Image) -> tuple[float, float]:
    """The value range that 32-bit images are scaled from (the only conversion that looks beyond a pixel)."""
    if img.mode == "I":
        hi = img.getextrema()[1]
        return 0.0, 65535.0 if float(hi) > 255 else 255.0  # type: ignore[arg-type]
    if img.mode != "F":
        return 0.0, 255.0
    lo, hi = np.inf, -np.inf
    w, h = img.size
    tw, th = _tile_shape(w, h, 1)
    for y0 in range(0, h, th):
        for x0 in range(0, w, tw):
            with np.errstate(invalid="ignore"):
                a = np.asarray(img.crop((x0, y0, min(x0 + tw, w), min(y0 + th, h))), dtype=np.float32)
                a = a[np.isfinite(a)]
            if a.size:
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


def _tile_rgb(img: Image.Image, box: tuple[int, int, int, int], k: int, stats: tuple[float, float]) -> Image.Image:
    if k > 1 and img.mode in ("RGB", "L"):
        t = img.reduce(k, box)
    else:
        t = _tile_convert(img.crop(box), stats)
        if k > 1:
            t = t.reduce(k)
    return t if t.mode == "RGB" else t.convert("RGB")


def _tile_convert(t: Image.Image, stats: tuple[float, float]) -> Image.Image:
    """One tile in any mode → ``RGB``, or ``L`` when it is grey (expanded to RGB after reducing)."""
    mode = t.mode
    if mode in ("RGB", "L"):
        return t
    if mode in _I16_MODES:
        return Image.fromarray(_LUT16[np.asarray(t)])
    if mode in ("I", "F"):
        # In place, in the order the formulas read, so the bytes are those of evaluating them on the whole image.
        # A signalling NaN sets the invalid flag when cast: it becomes a NaN, then black, not a warning.
        lo, hi = stats
        with np.errstate(invalid="ignore"):
            a = np.asarray(t, dtype=np.float64)
            if mode == "I":  # clip(a / hi * 255 + 0.5)
                a /= hi
                a *= 255.0
                a += 0.5
            elif hi > lo:  # (a - lo) / (hi - lo) * 255; NaN and infinities (outside the range): black and white
                a -= lo
                a /= hi - lo
                a *= 255.0
                np.nan_to_num(a, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            else:
                a[:] = 0.0
            np.clip(a, 0, 255, out=a)
            return Image.fromarray(a.astype(np.uint8))
    if mode == "P" and "transparency" in t.info:
        t, mode = t.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = t.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return t.convert("RGB")


def _transposed_origin(
    method: Image.Transpose, x: float, y: float, tw: float, th: float, ow: float, oh: float
) -> tuple[float, float]:
    """Where a ``tw`` × ``th`` tile at ``(x, y)`` of a ``ow`` × ``oh`` image lands once the image is transposed."""
    T = Image.Transpose
    return {
        T.FLIP_LEFT_RIGHT: (ow - x - tw, y),
        T.ROTATE_180: (ow - x - tw, oh - y - th),
        T.FLIP_TOP_BOTTOM: (x, oh - y - th),
        T.TRANSPOSE: (y, x),
        T.ROTATE_270: (oh - y - th, x),
        T.TRANSVERSE: (oh - y - th, ow - x - tw),
        T.ROTATE_90: (y, ow - x - tw),
    }[method]


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output size of CLIP's shortest-side resize (torchvision's rule: the long side is truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Centre crop box ``(left, top, right, bottom)`` as torchvision's ``CenterCrop`` computes it."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Shortest side to ``cfg.image_size``, then centre crop: the geometry of CLIP's transform.

    An image that ``decode_image`` reduced (``min_side``) is resized from the source's exact extent and size,
    which it records in ``info``, so its geometry is the full-size image's.
    """
    if cfg.resize_mode != "shortest":
        raise ValueError(f"unsupported resize_mode {cfg.resize_mode!r}; expected 'shortest'")
    try:
        resample = _RESAMPLE[cfg.interpolation]
    except KeyError:
        raise ValueError(
            f"unsupported interpolation {cfg.interpolation!r}; expected one of {sorted(_RESAMPLE)}"
        ) from None
    s = cfg.image_size
    box, (w, h) = None, img.size
    geometry = img.info.get("source_box")
    if geometry is not None and tuple(geometry[0]) == img.size and "source_size" in img.info:
        box, (w, h) = geometry[1], img.info["source_size"]
    w, h = resized_size(w, h, s)
    if box is not None or (w, h) != img.size:
        img = img.resize((w, h), resample, box=box)
    if (w, h) != (s, s):
        img = img.crop(crop_box(w, h, s))
    return img


def normalize(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → float32 ``[3, H, W]`` scaled to [0, 1] and normalised per channel."""
    x = rgb.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(cfg.mean, np.float32)
    x /= np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """An RGB image → the model input ``[3, S, S]`` float32."""
    img = resize_and_crop(to_rgb(img), cfg)
    return normalize(np.asarray(img, dtype=np.uint8), cfg)


def preprocess_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """Several RGB images → ``[B, 3, S, S]`` float32."""
    if not images:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), np.float32)
    return np.stack([preprocess(im, cfg) for im in images])


def mask_to_grid(mask: np.ndarray, grid: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """A full-resolution mask → its fraction-covered map on the model's patch grid.

    Applies the same resize and crop as the image, so patch ``(i, j)`` of the result covers exactly the
    pixels that patch ``(i, j)`` of the model sees.

    Args:
        mask: ``[H, W]`` bool or values in [0, 1] (uint8 masks with 255 for "on" are accepted).
        grid: ``(h, w)`` patches.
        cfg: the image's preprocessing.

    Returns:
        ``[h, w]`` float32 in [0, 1]: the fraction of each patch that is masked.
    """
    m = np.asarray(mask)
    if m.dtype == np.uint8 and m.max(initial=0) > 1:
        m = m.astype(np.float32) / 255.0
    m = np.clip(m.astype(np.float32), 0.0, 1.0)
    # Resize as a float image with a box-like filter, crop, then average over each patch.
    im = Image.fromarray(m.astype(np.float32))
    s = cfg.image_size
    w, h = resized_size(im.width, im.height, s)
    im = im.resize((w, h), Image.Resampling.BILINEAR).crop(crop_box(w, h, s))
    a = np.asarray(im, dtype=np.float32)
    gh, gw = grid
    if s % gh or s % gw:
        raise ValueError(f"image size {s} is not divisible by the grid {grid}")
    a = a.reshape(gh, s // gh, gw, s // gw).mean(axis=(1, 3))
    return np.clip(a, 0.0, 1.0).astype(np.float32)
