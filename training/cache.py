"""Feature cache: the frozen backbone's outputs, computed once per image and view, memory-mapped fp16.

CLIP never changes while the head trains, so ``backbone.encode_dense`` runs once per (image, view) and the
training loop reads ``g`` and ``patches`` from disk. A cache directory is::

    <cache_root>/<name>-<key[:16]>/
        meta.json          what the key was made of (written last: a directory without it is incomplete)
        global.npy         [N, V, D]    float16, L2-normalised global embeddings
        patches.npy        [N, V, P, D] float16, joint-space patch tokens
        ok.npy             [N] bool     the image decoded (False only for rows skipped with skip_bad)
        sizes.npy          [N, 2]       decoded (width, height), to check masks against
        targets-<hash>.npz labels [N, k], masks [N, k, P] (grid coverage, un-mirrored), mask_valid [N, k]

The feature key is the sha256 of the backbone's hash, the preprocessing config, the view recipe and the
image files (path, size, mtime): change any of them and a new cache is built. Labels and masks have their
own small key, so relabelling a dataset does not re-encode it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.files import atomic_path
from dangerclip.runtime.manifest import ManifestError, ManifestIssue, ManifestRow
from dangerclip.runtime.preprocess import ImageError, load_image
from training.data import ViewRecipe, load_mask, render_views, row_mask_grid

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class DenseEncoder(Protocol):
    """What the cache needs of a backbone (``dangerclip.modeling.backbone.DenseCLIP``)."""

    sha256: str

    def encode_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class CacheStats:
    """How a cache was obtained, for logs and tests."""

    built: bool
    images: int
    views: int
    encoded: int
    seconds: float


class FeatureCache:
    """A read-only, memory-mapped feature cache with its targets.

    Attributes:
        path: the cache directory.
        meta: the contents of ``meta.json``.
        g: ``[N, V, D]`` float16 memmap.
        patches: ``[N, V, P, D]`` float16 memmap.
        ok: ``[N]`` bool.
        labels: ``[N, k]`` float32.
        masks: ``[N, k, P]`` float32 grid coverage.
        mask_valid: ``[N, k]`` bool.
        view_flips: ``[V]`` bool, view ``v`` is mirrored.
        stats: how it was obtained.
    """

    def __init__(self, path: Path, targets: Path, stats: CacheStats) -> None:
        self.path = path
        self.meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
        self.g = np.load(path / "global.npy", mmap_mode="r")
        self.patches = np.load(path / "patches.npy", mmap_mode="r")
        self.ok = np.load(path / "ok.npy")
        t = np.load(targets)
        self.labels = t["labels"].astype(np.float32)
        self.masks = t["masks"].astype(np.float32)
        self.mask_valid = t["mask_valid"].astype(bool)
        self.view_flips = np.array([f for _, f in self.meta["views"]], bool)
        self.grid = tuple(self.meta["grid"])
        self.stats = stats

    def __len__(self) -> int:
        return int(self.g.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.g.shape[1])

    @property
    def valid_indices(self) -> np.ndarray:
        """Indices of the rows that decoded."""
        return np.nonzero(self.ok)[0]

    def batch(self, idx: np.ndarray, views: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """A training batch.

        Args:
            idx: ``[B]`` row indices.
            views: ``[B]`` view per row (default: view 0, the plain image).

        Returns:
            ``g [B, D]``, ``patches [B, P, D]`` float32; ``labels [B, k]``; ``masks [B, k, P]`` mirrored with
            their view; ``mask_valid [B, k]`` bool.
        """
        idx = np.asarray(idx, np.int64)
        views = np.zeros_like(idx) if views is None else np.asarray(views, np.int64)
        # Sorted reads touch the memmap sequentially; the order is restored afterwards.
        order = np.lexsort((views, idx))
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        g = np.asarray(self.g[idx[order], views[order]], np.float32)[inv]
        patches = np.asarray(self.patches[idx[order], views[order]], np.float32)[inv]
        masks = self.masks[idx].copy()
        flip = self.view_flips[views]
        if flip.any():
            h, w = self.grid
            m = masks[flip].reshape(-1, masks.shape[1], h, w)[..., ::-1]
            masks[flip] = m.reshape(-1, masks.shape[1], h * w)
        return {
            "g": torch.from_numpy(g),
            "patches": torch.from_numpy(patches),
            "labels": torch.from_numpy(self.labels[idx]),
            "masks": torch.from_numpy(masks),
            "mask_valid": torch.from_numpy(self.mask_valid[idx]),
        }


def _file_sig(path: str) -> list[object]:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def feature_key(backbone_sha256: str, cfg: PreprocessConfig, recipe: ViewRecipe, rows: Sequence[ManifestRow]) -> str:
    """The sha256 that names a feature cache: backbone, preprocessing, view recipe and image files."""
    doc = {
        "format": FORMAT_VERSION,
        "backbone": backbone_sha256,
        "preprocess": asdict(cfg),
        "recipe": recipe.to_dict(),
        "images": [[r.id] + _file_sig(r.image) for r in rows],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()


def targets_key(rows: Sequence[ManifestRow], categories: Sequence[str], grid: tuple[int, int]) -> str:
    """The sha256 of what the targets depend on: labels, mask files, categories and grid."""
    doc = {
        "categories": list(categories),
        "grid": list(grid),
        "rows": [
            [r.labels.get(c, 0) for c in categories]
            + [_file_sig(r.masks[c]) if c in r.masks else None for c in categories]
            for r in rows
        ],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _device_of(backbone: object) -> torch.device:
    try:
        return next(backbone.parameters()).device  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def build_or_load(
    backbone: DenseEncoder,
    rows: Sequence[ManifestRow],
    categories: Sequence[str],
    cfg: PreprocessConfig,
    grid: tuple[int, int],
    recipe: ViewRecipe,
    cache_root: str | Path,
    name: str,
    *,
    skip_bad: bool = False,
    encode_batch: int = 64,
    prune: bool = True,
    progress: bool = False,
) -> FeatureCache:
    """Open the cache for these rows, building it first when it is missing or stale.

    Args:
        backbone: the frozen encoder (``model.backbone``); it stays on its device.
        rows: the dataset rows, in the order the cache indexes them.
        categories: ``[k]`` model categories.
        cfg: the model's preprocessing.
        grid: ``(h, w)`` patch grid.
        recipe: the augmented views to store (``PLAIN`` for evaluation splits).
        cache_root: folder holding caches.
        name: a label for this cache (``train``, ``val``...); other caches of the same name are deleted
            when a new one is built (``prune``), so a changed backbone does not pile up gigabytes.
        skip_bad: rows whose image or mask cannot be decoded are marked not ``ok`` instead of raising.
        encode_batch: inputs per backbone call.
        progress: show a progress bar.

    Raises:
        ManifestError: every row whose image or mask fails to decode, with line numbers, unless ``skip_bad``.
            Decoding goes on after the first failure (without encoding) so that all of them are listed.
    """
    t0 = time.monotonic()
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    # The architecture too: QuickGELU and GELU towers share weights (and their hash) but not their features.
    fkey = feature_key(f"{backbone.sha256}/{getattr(backbone, 'arch', '')}", cfg, recipe, rows)
    tkey = targets_key(rows, categories, grid)
    path = root / f"{name}-{fkey[:16]}"
    views = recipe.views()
    targets = path / f"targets-{tkey[:16]}.npz"
    if (path / "meta.json").is_file():
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("key") == fkey:
            if not targets.is_file():
                _write_targets(
                    path, targets, rows, categories, grid, cfg, np.load(path / "ok.npy"), np.load(path / "sizes.npy")
                )
            log.info("feature cache %s: reused (%d images x %d views)", path, len(rows), len(views))
            return FeatureCache(path, targets, CacheStats(False, len(rows), len(views), 0, time.monotonic() - t0))
    encoded = _build(backbone, rows, cfg, grid, recipe, path, fkey, skip_bad, encode_batch, progress)
    _write_targets(path, targets, rows, categories, grid, cfg, np.load(path / "ok.npy"), np.load(path / "sizes.npy"))
    if prune:
        for other in root.glob(f"{name}-*"):
            if other != path and other.is_dir():
                log.info("feature cache: removing stale %s", other)
                shutil.rmtree(other, ignore_errors=True)
    dt = time.monotonic() - t0
    log.info("feature cache %s: built (%d images x %d views, %.1fs)", path, len(rows), len(views), dt)
    return FeatureCache(path, targets, CacheStats(True, len(rows), len(views), encoded, dt))


def _build(
    backbone: DenseEncoder,
    rows: Sequence[ManifestRow],
    cfg: PreprocessConfig,
    grid: tuple[int, int],
    recipe: ViewRecipe,
    path: Path,
    fkey: str,
    skip_bad: bool,
    encode_batch: int,
    progress: bool,
) -> int:
    """Encode every row's views into a temporary folder, then rename it to ``path``; returns views encoded."""
    views = recipe.views()
    n, v = len(rows), len(views)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = _FeatureWriter(backbone, tmp, n, v)
    ok = np.zeros(n, bool)
    sizes = np.zeros((n, 2), np.int64)
    issues: list[ManifestIssue] = []
    bar = _progress_bar(n) if progress else None
    try:
        for i, views_i, size, err in _prefetched(rows, max(1, encode_batch // v), cfg, recipe):
            if err is not None:
                issues.append(ManifestIssue(rows[i].line or i + 1, f"{rows[i].image}: {err}"))
                if not skip_bad:
                    writer.pending.clear()
            else:
                sizes[i] = size
                ok[i] = True
                # After a failure (strict mode) the cache will not be written: only validate the rest.
                if not issues or skip_bad:
                    writer.pending.append((i, views_i))
            if len(writer.pending) * v >= encode_batch:
                writer.flush()
            if bar is not None:
                bar.update(1)
        if issues and not skip_bad:
            raise ManifestError(f"dataset {path.name.split('-')[0]!r}", issues)
        writer.close()
        np.save(tmp / "ok.npy", ok)
        np.save(tmp / "sizes.npy", sizes)
        if issues:
            log.warning(
                "feature cache: %d image(s) skipped (skip_bad): %s", len(issues), "; ".join(map(str, issues[:5]))
            )
        meta = {
            "key": fkey,
            "format": FORMAT_VERSION,
            "backbone_sha256": backbone.sha256,
            "preprocess": asdict(cfg),
            "recipe": recipe.to_dict(),
            "views": [list(x) for x in views],
            "grid": list(grid),
            "images": n,
            "image_paths": [r.image for r in rows],
            "skipped": len(issues),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=list))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return writer.encoded
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


class _FeatureWriter:
    """Encodes pending views with the backbone and writes them into fp16 memory maps in ``folder``.

    The maps are created at the first batch, when the embedding and patch shapes are known.
    """

    def __init__(self, backbone: DenseEncoder, folder: Path, n: int, v: int) -> None:
        self.backbone, self.folder, self.n, self.v = backbone, folder, n, v
        self.device = _device_of(backbone)
        self.pending: list[tuple[int, np.ndarray]] = []
        self.encoded = 0
        self.g: np.ndarray | None = None
        self.patches: np.ndarray | None = None

    def flush(self) -> None:
        if not self.pending:
            return
        n, v, k = self.n, self.v, len(self.pending)
        x = torch.from_numpy(np.concatenate([a for _, a in self.pending])).to(self.device)
        with torch.inference_mode():
            g, patches = self.backbone.encode_dense(x)
        g = g.float().cpu().numpy().reshape(k, v, -1)
        patches = patches.float().cpu().numpy().reshape(k, v, *patches.shape[1:])
        if self.g is None or self.patches is None:
            self.g = np.lib.format.open_memmap(self.folder / "global.npy", "w+", np.float16, (n, v, g.shape[-1]))
            self.patches = np.lib.format.open_memmap(
                self.folder / "patches.npy", "w+", np.float16, (n, v, *patches.shape[2:])
            )
        for j, (i, _) in enumerate(self.pending):
            self.g[i] = g[j]
            self.patches[i] = patches[j]
        self.encoded += k * v
        self.pending.clear()

    def close(self) -> None:
        """Encode what is pending and flush the maps to disk."""
        self.flush()
        if self.g is None or self.patches is None:
            raise ValueError("no image of the dataset could be decoded")
        for m in (self.g, self.patches):
            m.flush()  # type: ignore[attr-defined]
        self.g = self.patches = None


def _prefetched(
    rows: Sequence[ManifestRow], chunk: int, cfg: PreprocessConfig, recipe: ViewRecipe
) -> Iterator[tuple[int, np.ndarray | None, tuple[int, int], str | None]]:
    """``_load_rows`` chunk by chunk, the next chunk loading in a thread while the caller encodes this one.

    Decoding and rendering (Pillow and numpy release the GIL) overlap with the backbone; at most two chunks
    of views are in memory.
    """
    starts = list(range(0, len(rows), chunk))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(_load_rows, rows, starts[0], chunk, cfg, recipe)
        for c in range(len(starts)):
            loaded = fut.result()
            if c + 1 < len(starts):
                fut = pool.submit(_load_rows, rows, starts[c + 1], chunk, cfg, recipe)
            yield from loaded


def _progress_bar(n: int) -> Any:
    from dangerclip.runtime.progress import progress

    return progress(n, desc="encoding", unit="img")


def _load_rows(
    rows: Sequence[ManifestRow], start: int, count: int, cfg: PreprocessConfig, recipe: ViewRecipe
) -> list[tuple[int, np.ndarray | None, tuple[int, int], str | None]]:
    """Decode, check masks and render views of ``rows[start:start+count]``: ``(i, views, size, error)``."""
    out: list[tuple[int, np.ndarray | None, tuple[int, int], str | None]] = []
    for i in range(start, min(start + count, len(rows))):
        r = rows[i]
        try:
            img = load_image(r.image)
            for mp in r.masks.values():
                # Decode the masks now so that a broken one is reported here, with its line.
                load_mask(mp, img.size)
            out.append((i, render_views(img, r.id, cfg, recipe), img.size, None))
        except (ImageError, OSError, ValueError) as e:
            out.append((i, None, (0, 0), str(e)))
    return out


def _write_targets(
    path: Path,
    targets: Path,
    rows: Sequence[ManifestRow],
    categories: Sequence[str],
    grid: tuple[int, int],
    cfg: PreprocessConfig,
    ok: np.ndarray,
    sizes: np.ndarray,
) -> None:
    k, p = len(categories), grid[0] * grid[1]
    labels = np.zeros((len(rows), k), np.float32)
    masks = np.zeros((len(rows), k, p), np.float16)
    valid = np.zeros((len(rows), k), bool)
    for i, r in enumerate(rows):
        labels[i] = [r.labels.get(c, 0) for c in categories]
        if not ok[i]:
            continue
        m, v = row_mask_grid(r, categories, (int(sizes[i, 0]), int(sizes[i, 1])), grid, cfg)
        masks[i], valid[i] = m, v
    with atomic_path(targets) as tmp:
        np.savez(tmp, labels=labels, masks=masks, mask_valid=valid)
