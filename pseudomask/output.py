"""The job's output folder: atomic files, the results log, resume state and the training manifest.

Layout of ``OUT``::

    masks/ab/ab12cd34ef56ab78.weapon.png     full-resolution mask per image and category (0/255)
    grids/ab/ab12cd34ef56ab78.npy            [k, h, w] float32 patch-grid masks, categories in prompt order
    qa/<sha16>.png                           overlays for a person to check (optional)
    results.jsonl                            one JSON line per processed image (results.shard-I-of-N.jsonl
                                             when sharded, so pods never write the same file)
    manifest.jsonl                           training manifest (dangerclip.runtime.manifest format, mask → PNG)
    summary.json                             counts of the last run (summary.shard-I-of-N.json)

File names come from the image's content hash: identical images share outputs, and a re-run recognises
finished work whatever the image is called.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.runtime.files import atomic_write_bytes, write_json

log = logging.getLogger(__name__)

RESULTS_GLOB = "results*.jsonl"


def slug(text: str) -> str:
    """A file-name-safe form of a category name."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "category"


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` or ``.shard-00002-of-00004`` (1-based in names, as Kubernetes pods are counted by people)."""
    if shard is None:
        return ""
    i, n = shard
    return f".shard-{i + 1:05d}-of-{n:05d}"


def atomic_save_png(path: Path, img: Image.Image) -> None:
    """Save ``img`` as a PNG that readers never see half-written."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    """Save ``arr`` as a ``.npy`` file that readers never see half-written."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


class OutputDir:
    """Paths and writers of one output folder.

    Args:
        root: the output folder (created).
        shard: ``(index, count)`` when this process is one shard of several.
    """

    def __init__(self, root: str | Path, shard: tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.results_path = self.root / f"results{shard_suffix(shard)}.jsonl"
        self.summary_path = self.root / f"summary{shard_suffix(shard)}.json"
        self.manifest_path = self.root / f"manifest{shard_suffix(shard)}.jsonl"

    def mask_path(self, sha: str, category: str) -> Path:
        return self.root / "masks" / sha[:2] / f"{sha[:16]}.{slug(category)}.png"

    def grid_path(self, sha: str) -> Path:
        return self.root / "grids" / sha[:2] / f"{sha[:16]}.npy"

    def qa_path(self, sha: str) -> Path:
        return self.root / "qa" / f"{sha[:16]}.png"

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.root))

    def append_result(self, record: dict[str, Any]) -> None:
        """Append one JSON line and fsync it: the line is the commit record of an image's outputs.

        A previous crash can leave a partial last line; it is closed with a newline first so the new
        record stays readable (the partial line is skipped by ``read_results``).
        """
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        p = self.results_path
        needs_nl = False
        if p.exists() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_nl = f.read(1) != b"\n"
        with open(p, "a", encoding="utf-8") as f:
            f.write(("\n" if needs_nl else "") + line)
            f.flush()
            os.fsync(f.fileno())

    def read_results(self) -> Iterator[dict[str, Any]]:
        """Every readable record of every shard's results file, oldest first within a file."""
        for p in sorted(self.root.glob(RESULTS_GLOB)):
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s line %d is not valid JSON (interrupted write?); ignored", p, n)
                        continue
                    if isinstance(rec, dict) and "sha256" in rec:
                        yield rec

    def latest_results(self) -> dict[str, dict[str, Any]]:
        """The last record per content hash, over all shards."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.read_results():
            out[rec["sha256"]] = rec
        return out

    def write_json(self, path: Path, obj: Any) -> None:
        write_json(path, obj, indent=2, sort_keys=True)
