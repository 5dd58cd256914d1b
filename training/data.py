"""Datasets for training: manifests or folders in, validated rows, splits, masks and augmented views out.

Images go through ``dangerclip.runtime.preprocess`` only (the one preprocessing path that export and serving use);
colour augmentation is applied to the resized, cropped uint8 image between ``resize_and_crop`` and
``normalize``, so an augmented view differs from the served input in colour only. Masks go through
``dangerclip.runtime.preprocess.mask_to_grid``, which applies the image's own geometry.

Augmented views are a fixed recipe (``ViewRecipe``): view 0 is the plain image; colour views are seeded by
the image id and view index, so the feature cache can hold them and a rebuilt cache is identical.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.manifest import (
    ManifestError,
    ManifestIssue,
    ManifestRow,
    manifest_from_folder,
    read_manifest,
)
from dangerclip.runtime.preprocess import ImageError, mask_to_grid, normalize, resize_and_crop

log = logging.getLogger(__name__)


SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
"""Default split of rows that have no ``split`` field, by a hash of their id (stable across runs)."""


# --- rows -------------------------------------------------------------------------------------------


def load_rows(source: str | Path, categories: Sequence[str], *, skip_bad: bool = False) -> list[ManifestRow]:
    """Rows of a manifest (``.jsonl`` / ``.csv``) or of a folder ``<root>/<category or negative>/*``.

    Every bad row (missing file, unreadable image header, unknown label, bad split, missing mask) is
    collected with its line number and raised together before anything is computed.

    Args:
        source: manifest file or dataset folder.
        categories: the model's categories, in order.
        skip_bad: drop bad rows with a warning instead of raising.

    Raises:
        ManifestError: listing every bad row, unless ``skip_bad``.
        FileNotFoundError: when ``source`` does not exist.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"dataset not found: {src}")
    if src.is_dir():
        rows = manifest_from_folder(src, categories)
        issues = []
        good = []
        for i, r in enumerate(rows, 1):
            try:
                with Image.open(r.image) as im:
                    im.verify()
                good.append(r)
            except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
                # Folder rows have no line; number them in the sorted listing and name the file.
                issues.append(ManifestIssue(i, f"unreadable image {r.image}: {e}"))
        _raise_or_warn(src, issues, skip_bad)
        rows = good
    else:
        try:
            rows = read_manifest(src, categories)
        except ManifestError as e:
            _raise_or_warn(src, e.issues, skip_bad)
            rows = read_manifest(src, categories, skip_bad=True)
    if not rows:
        raise ValueError(f"{src}: no usable rows")
    return rows


def _raise_or_warn(src: Path, issues: Sequence[ManifestIssue], skip_bad: bool) -> None:
    if not issues:
        return
    if not skip_bad:
        raise ManifestError(src, issues)
    for i in issues:
        log.warning("%s: skipping %s", src, i)
    log.warning("%s: skipped %d bad row(s) (--skip-bad)", src, len(issues))


def assign_splits(rows: Sequence[ManifestRow], fractions: dict[str, float] | None = None) -> dict[str, list[int]]:
    """Row indices per split. Rows with a ``split`` keep it; the others are split by a hash of their id.

    Hashing the id (not a shuffle) keeps an image in the same split when rows are added or reordered.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (lists may be empty).
    """
    fr = dict(SPLIT_FRACTIONS if fractions is None else fractions)
    total = sum(fr.values())
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, r in enumerate(rows):
        if r.split:
            out[r.split].append(i)
            continue
        u = int.from_bytes(hashlib.sha256((r.id or r.image).encode()).digest()[:8], "big") / 2.0**64
        acc = 0.0
        for name in ("train", "val", "test"):
            acc += fr.get(name, 0.0) / total
            if u < acc:
                out[name].append(i)
                break
        else:
            out["train"].append(i)
    return out


# --- masks --------------------------------------------------------------------------------------------


def load_mask(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """A mask PNG → ``[H, W]`` float32 in {0, 1} (non-zero = danger).

    Args:
        path: mask file.
        image_size: ``(width, height)`` of the image it belongs to; the mask must match it.

    Raises:
        ImageError: the file cannot be read or its size differs from the image's.
    """
    from PIL import Image

    try:
        with Image.open(path) as raw:
            raw.load()
            im = raw.copy()
    except (OSError, ValueError) as e:
        raise ImageError("decode_error", f"mask {path} cannot be read: {e}") from e
    if im.size != tuple(image_size):
        raise ImageError(
            "decode_error", f"mask {path} is {im.size[0]}x{im.size[1]}, image is {image_size[0]}x{image_size[1]}"
        )
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # A cut-out (object opaque, background transparent): the alpha channel is the mask. Composited on
        # white, as images are, every pixel would read as danger.
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return (alpha > 0).astype(np.float32)
    return (np.asarray(im.convert("L")) > 0).astype(np.float32)


def row_mask_grid(
    row: ManifestRow,
    categories: Sequence[str],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    cfg: PreprocessConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """A row's masks on the patch grid.

    A category the image is negative for has an exact, empty mask (there is nothing to find). A positive
    category is supervised densely only when the row gives a mask for it.

    Returns:
        ``(masks [k, h*w] float32 coverage, valid [k] bool)``.
    """
    k = len(categories)
    gh, gw = grid
    masks = np.zeros((k, gh * gw), np.float32)
    valid = np.zeros(k, bool)
    for j, c in enumerate(categories):
        if c in row.masks:
            m = load_mask(row.masks[c], image_size)
            if row.labels.get(c, 0) == 0 and m.any():
                log.warning(
                    "row %s (line %d): negative for %r but its mask is not empty; using it", row.id, row.line, c
                )
            masks[j] = mask_to_grid(m, grid, cfg).reshape(-1)
            valid[j] = True
        elif row.labels.get(c, 0) == 0:
            valid[j] = True
    return masks, valid


# --- augmented views ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewRecipe:
    """Which augmented views of each training image are precomputed.

    The views are every combination of (plain, ``color_views`` colour-jittered) × (as is, mirrored when
    ``flip``). The colour jitter follows Detectron2's ``ColorAugSSDTransform`` (brightness ±32, contrast and
    saturation ×[0.5, 1.5], hue ±18°), each part applied with probability ½, seeded per image and view;
    then, with probability ``grayscale``, the view is turned grey (ITU-R 601 luma in three channels, what a
    greyscale upload decodes to), as CLIP-style training does, so that a model does not rely on colour alone.

    Attributes:
        flip: add horizontally mirrored views (exact on the patch grid: the mask grid is mirrored too).
        color_views: number of colour-jittered views per orientation.
        brightness: largest brightness shift, in 8-bit levels.
        contrast: contrast factor range ``1 ± contrast``.
        saturation: saturation factor range ``1 ± saturation``.
        hue: largest hue shift in degrees.
        grayscale: probability that a colour-jittered view is also turned grey.
        seed: seed of the jitter draws.
    """

    flip: bool = True
    color_views: int = 2
    brightness: float = 32.0
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 18.0
    grayscale: float = 0.2
    seed: int = 0

    def views(self) -> list[tuple[int, bool]]:
        """``(colour index, mirrored)`` per view; colour 0 is the unchanged image. View 0 is the plain image."""
        flips = (False, True) if self.flip else (False,)
        return [(c, f) for f in flips for c in range(self.color_views + 1)]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


PLAIN = ViewRecipe(flip=False, color_views=0)
"""The recipe of evaluation data: the served input only."""


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, recipe: ViewRecipe) -> np.ndarray:
    """Detectron2-style photometric distortion of a uint8 ``[H, W, 3]`` image (geometry unchanged).

    Saturation and hue are changed in Pillow's 8-bit HSV (hue steps of 360/256 degrees): plenty for an
    augmentation, and some twenty times faster than float HSV in numpy.
    """
    x = rgb.astype(np.float32)
    if rng.random() < 0.5:
        x = x + np.float32(rng.uniform(-recipe.brightness, recipe.brightness))
    if rng.random() < 0.5:
        mean = x.mean()
        x = (x - mean) * np.float32(rng.uniform(1 - recipe.contrast, 1 + recipe.contrast)) + mean
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
    sat = rng.uniform(1 - recipe.saturation, 1 + recipe.saturation)
    hue = rng.uniform(-recipe.hue, recipe.hue) / 360.0
    if do_sat or do_hue:
        hsv = np.asarray(Image.fromarray(out, "RGB").convert("HSV")).copy()
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * sat + 0.5, 0, 255).astype(np.uint8)
        if do_hue:
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue * 256))) % 256).astype(np.uint8)
        out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    # Drawn last, so the photometric draws above are the same with or without it.
    if rng.random() < recipe.grayscale:
        out = np.asarray(Image.fromarray(out, "RGB").convert("L").convert("RGB"))
    return out


def render_views(img: Image.Image, image_id: str, cfg: PreprocessConfig, recipe: ViewRecipe) -> np.ndarray:
    """All views of one image as model inputs.

    Args:
        img: RGB image.
        image_id: stable id; seeds the colour jitter so the same image always gets the same views.
        cfg: preprocessing (the served one).
        recipe: which views.

    Returns:
        ``[V, 3, S, S]`` float32, in ``recipe.views()`` order; view 0 equals ``preprocess(img, cfg)``.
    """
    base = np.asarray(resize_and_crop(img.convert("RGB") if img.mode != "RGB" else img, cfg), np.uint8)
    colours = [base]
    for c in range(1, recipe.color_views + 1):
        seed = int.from_bytes(hashlib.sha256(f"{recipe.seed}:{image_id}:{c}".encode()).digest()[:8], "big")
        colours.append(color_jitter(base, np.random.default_rng(seed), recipe))
    out = []
    for c, flipped in recipe.views():
        x = normalize(colours[c], cfg)
        # Mirroring the cropped input is exact on the patch grid (S is a multiple of the patch size).
        out.append(np.ascontiguousarray(x[:, :, ::-1]) if flipped else x)
    return np.stack(out)
