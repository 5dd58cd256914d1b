"""The one preprocessing path: safe decode and CLIP's transform in numpy and Pillow.

Training, export and serving all call these functions, so a served model sees exactly the pixels it was
trained on. No torch, no torchvision: the service imports this module.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dangerclip.card import PreprocessConfig

DEFAULT_MAX_PIXELS = 40_000_000
"""Refuse images above this many pixels before decoding them (decompression bombs)."""

IMAGE_SUFFIXES_FOR_SCAN = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File suffixes picked up when a folder is given instead of files."""

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(ValueError):
    """An input that cannot become a model input.

    Attributes:
        reason: a stable machine-readable code (``not_an_image``, ``too_many_pixels``, ``too_large``,
            ``decode_error``) that the service puts on dead-letter records.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> Image.Image:
    """Decode encoded image bytes into an 8-bit RGB image, safely.

    The pixel count is checked from the header before any pixel is decoded. EXIF orientation is applied;
    CMYK, greyscale, palette, 16-bit and alpha images become RGB (alpha composited on white); animations
    give their first frame.

    Args:
        data: the encoded file (JPEG, PNG, GIF, WebP, BMP, TIFF, ...).
        max_pixels: largest width × height accepted.
        max_bytes: largest encoded size accepted, if set.

    Returns:
        A loaded RGB ``PIL.Image``.

    Raises:
        ImageError: with ``reason`` set, for anything that is not a usable image.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError("too_large", f"encoded image is {len(data)} bytes, limit is {max_bytes}")
    if not data:
        raise ImageError("not_an_image", "empty input")
    return _open_checked(io.BytesIO(data), max_pixels=max_pixels)


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``decode_image`` for a file on disk."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels=max_pixels)


def _open_checked(fp: io.BytesIO, *, max_pixels: int) -> Image.Image:
    # Pillow's own bomb check only warns below 2x its limit; we check the header ourselves and turn
    # its warning into an error so nothing large is ever decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except UnidentifiedImageError as e:
            raise ImageError("not_an_image", "not a recognised image format") from e
        except Image.DecompressionBombError as e:
            raise ImageError("too_many_pixels", str(e)) from e
        except Image.DecompressionBombWarning as e:
            raise ImageError("too_many_pixels", str(e)) from e
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken headers
            raise ImageError("decode_error", f"cannot read image header: {e}") from e
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError("decode_error", f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageError("too_many_pixels", f"image is {w}x{h} = {w * h} pixels, limit is {max_pixels}")
        try:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
        except ImageError:
            raise
        except Image.DecompressionBombWarning as e:
            raise ImageError("too_many_pixels", str(e)) from e
        except Exception as e:  # noqa: BLE001 - truncated or corrupt data surfaces as many types
            raise ImageError("decode_error", f"cannot decode image: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB. Transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the full range down to 8 bits rather than clipping.
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
    """Shortest side to ``cfg.image_size``, then centre crop: the geometry of CLIP's transform."""
    if cfg.resize_mode != "shortest":
        raise ValueError(f"unsupported resize_mode {cfg.resize_mode!r}; expected 'shortest'")
    try:
        resample = _RESAMPLE[cfg.interpolation]
    except KeyError:
        raise ValueError(
            f"unsupported interpolation {cfg.interpolation!r}; expected one of {sorted(_RESAMPLE)}"
        ) from None
    s = cfg.image_size
    w, h = resized_size(img.width, img.height, s)
    if (w, h) != img.size:
        img = img.resize((w, h), resample)
    if (w, h) != (s, s):
        img = img.crop(crop_box(w, h, s))
    return img


def normalize(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → float32 ``[3, H, W]`` scaled to [0, 1] and normalised per channel."""
    x = rgb.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
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
