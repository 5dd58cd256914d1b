"""The index on disk, in generations switched atomically, and its writer and reader.

Layout of an index folder::

    CURRENT                 the name of the live generation (replaced atomically: write, fsync, rename)
    gen-<time>-<id>/
        entries.jsonl       one reference entry a line: id, label, source, pdq (hex), quality, added_at
        pdq.faissbin        faiss IndexBinaryFlat over the hashes, rows in entries.jsonl order
        meta.json           counts, threshold, created_at

Every change (add, remove, rebuild) writes a whole new generation beside the live one and then switches
``CURRENT``: a reader either sees the old generation or the new, never half of one. Old generations are pruned
after the switch, keeping the previous one (a reader that loaded it a moment ago keeps working).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.runtime.files import atomic_write_text
from dangerclip.runtime.index.pdq import DEFAULT_THRESHOLD, PDQ_BITS, from_hex, pdq_hash, to_hex

log = logging.getLogger(__name__)
POINTER = "CURRENT"


@dataclass(frozen=True)
class Entry:
    """A reference item."""

    id: str
    label: str | None
    pdq: str
    quality: int = 100
    source: str = ""
    added_at: float = 0.0


@dataclass(frozen=True)
class Match:
    """A reference entry near a query."""

    id: str
    label: str | None
    distance: float
    signal: str = "pdq"


class _Generation:
    """One loaded generation: its entries and its faiss index."""

    def __init__(self, path: Path) -> None:
        import faiss

        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        with open(path / "entries.jsonl") as f:
            self.entries = [Entry(**json.loads(line)) for line in f if line.strip()]
        self.index = faiss.read_index_binary(str(path / "pdq.faissbin"))
        if self.index.ntotal != len(self.entries):
            raise ValueError(f"{path}: {self.index.ntotal} hashes for {len(self.entries)} entries")

    def search(self, hashes: np.ndarray, k: int) -> list[list[Match]]:
        if not self.entries or len(hashes) == 0:
            return [[] for _ in range(len(hashes))]
        k = min(k, len(self.entries))
        dist, idx = self.index.search(hashes, k)
        out = []
        for drow, irow in zip(dist, idx, strict=True):
            out.append(
                [
                    Match(self.entries[i].id, self.entries[i].label, float(d), "pdq")
                    for d, i in zip(drow, irow, strict=True)
                    if i >= 0
                ]
            )
        return out


def _pack(entries: Sequence[Entry]) -> np.ndarray:
    if not entries:
        return np.zeros((0, PDQ_BITS // 8), np.uint8)
    return np.stack([np.frombuffer(from_hex(e.pdq), np.uint8) for e in entries])


def current_generation(root: Path) -> Path | None:
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    return root / name if name else None


class IndexWriter:
    """Changes an index folder, one new generation per call.

    Args:
        root: the index folder (created).
        threshold: PDQ distance at or under which a match is ``known`` (stored in the generation).
        keep: generations kept after a switch (the live one and the one before).
    """

    def __init__(self, root: str | Path, threshold: int = DEFAULT_THRESHOLD, keep: int = 2) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self.keep = keep

    def entries(self) -> list[Entry]:
        gen = current_generation(self.root)
        return [] if gen is None else _Generation(gen).entries

    def write(self, entries: Iterable[Entry]) -> Path:
        """Write ``entries`` as the new live generation (ids must be unique) and return its folder."""
        import faiss

        entries = list(entries)
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"duplicate ids in the index: {dup}")
        name = f"gen-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / f".{name}.tmp"
        tmp.mkdir()
        with open(tmp / "entries.jsonl", "w") as f:
            for e in entries:
                f.write(json.dumps(asdict(e)) + "\n")
        index = faiss.IndexBinaryFlat(PDQ_BITS)
        if entries:
            index.add(_pack(entries))
        faiss.write_index_binary(index, str(tmp / "pdq.faissbin"))
        meta = {"entries": len(entries), "threshold": self.threshold, "created_at": time.time(), "signals": ["pdq"]}
        (tmp / "meta.json").write_text(json.dumps(meta))
        for p in tmp.iterdir():  # durable before it becomes visible
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        final = self.root / name
        os.replace(tmp, final)
        atomic_write_text(self.root / POINTER, name + "\n")
        self._prune(final)
        log.info("index %s: generation %s with %d entries", self.root, name, len(entries))
        return final

    def _prune(self, live: Path) -> None:
        gens = sorted((p for p in self.root.glob("gen-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in gens[: max(0, len(gens) - self.keep)]:
            if old != live:
                shutil.rmtree(old, ignore_errors=True)

    def add(self, new: Iterable[Entry], replace: bool = False) -> Path:
        """The live entries plus ``new``; an id already present is an error unless ``replace``."""
        current = {e.id: e for e in self.entries()}
        for e in new:
            if e.id in current and not replace:
                raise ValueError(f"id {e.id!r} is already in the index (pass replace to overwrite it)")
            current[e.id] = e
        return self.write(current.values())

    def remove(self, ids: Iterable[str]) -> tuple[Path, int]:
        """The live entries without ``ids`` (compacted: removed entries leave no trace); returns the count removed."""
        drop = set(ids)
        kept = [e for e in self.entries() if e.id not in drop]
        before = len(self.entries())
        return self.write(kept), before - len(kept)


def entry_for_image(img: Image.Image, id: str, label: str | None = None, source: str = "") -> Entry:
    h, quality = pdq_hash(img)
    return Entry(id=id, label=label, pdq=to_hex(h), quality=quality, source=source, added_at=time.time())


class IndexReader:
    """Queries the live generation; ``reload_if_changed`` picks up a new one (a stat and a small read).

    Thread-safe: a query holds a reference to one generation for its whole run.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._gen: _Generation | None = None
        self._seen: str | None = None
        if not self.reload_if_changed():
            raise FileNotFoundError(f"no index at {self.root} (build one: dangerclip index build)")

    @property
    def generation(self) -> str | None:
        return None if self._gen is None else self._gen.path.name

    @property
    def threshold(self) -> float:
        return float(self._gen.meta.get("threshold", DEFAULT_THRESHOLD)) if self._gen else DEFAULT_THRESHOLD

    def __len__(self) -> int:
        return 0 if self._gen is None else len(self._gen.entries)

    def reload_if_changed(self) -> bool:
        """Load the live generation if ``CURRENT`` names another one; True when one is loaded (new or not)."""
        gen = current_generation(self.root)
        if gen is None:
            return self._gen is not None
        if gen.name == self._seen:
            return True
        loaded = _Generation(gen)
        with self._lock:
            self._gen, self._seen = loaded, gen.name
        log.info("index %s: loaded generation %s (%d entries)", self.root, gen.name, len(loaded.entries))
        return True

    def query_hashes(self, hashes: Sequence[bytes], k: int = 5) -> list[list[Match]]:
        with self._lock:
            gen = self._gen
        if gen is None:
            return [[] for _ in hashes]
        arr = np.stack([np.frombuffer(h, np.uint8) for h in hashes]) if hashes else np.zeros((0, 32), np.uint8)
        return gen.search(arr, k)

    def query_images(self, images: Sequence[Image.Image], k: int = 5) -> list[list[Match]]:
        return self.query_hashes([pdq_hash(img)[0] for img in images], k)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            gen = self._gen
        if gen is None:
            return {"entries": 0}
        labels: dict[str, int] = {}
        for e in gen.entries:
            labels[e.label or ""] = labels.get(e.label or "", 0) + 1
        low = sum(e.quality < 50 for e in gen.entries)
        return {
            "generation": gen.path.name,
            "entries": len(gen.entries),
            "labels": labels,
            "low_quality_hashes": low,
            "threshold": self.threshold,
            "created_at": gen.meta.get("created_at"),
        }
