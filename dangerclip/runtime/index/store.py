"""The index on disk, in generations switched atomically, and its writer and reader.

Layout of an index folder::

    CURRENT                 the name of the live generation (replaced atomically: write, fsync, rename)
    gen-<time>-<id>/
        entries.jsonl       one reference entry a line: id, label, source, pdq (hex), quality, added_at
        pdq.faissbin        faiss IndexBinaryFlat over the hashes, rows in entries.jsonl order
        embeddings.npy      (with an embedder) [N, D] float32 unit vectors, rows in entries.jsonl order
        vectors.faiss       (with an embedder) their faiss index: exact, or HNSW above 50 000 (``vectors``)
        meta.json           counts, threshold, created_at, signals, the embedder's identity and match distance

Every change (add, remove, rebuild) writes a whole new generation beside the live one and then switches
``CURRENT``: a reader either sees the old generation or the new, never half of one. Old generations are pruned
after the switch, keeping the previous one (a reader that loaded it a moment ago keeps working).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.runtime.files import atomic_write_text
from dangerclip.runtime.index import vectors
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
    """A reference entry near a query: by PDQ (Hamming distance of the hashes) or by embedding (Euclidean distance
    of unit vectors; ``same_model`` from the embedder's calibrated match distance)."""

    id: str
    label: str | None
    distance: float
    signal: str = "pdq"
    same_model: bool | None = None


def embedder_identity(card: Any) -> dict[str, Any]:
    """What an index records of the embedder its vectors came from (a query must use the same one)."""
    return {
        "name": card.name,
        "version": card.version,
        "dim": card.dim,
        "image_size": card.image_size,
        "match_distance": card.match_distance,
    }


def _same_embedder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("name", "version", "dim", "image_size"))


class _Generation:
    """One loaded generation: its entries and its faiss index."""

    def __init__(self, path: Path, qdrant: str | None = None) -> None:
        import faiss

        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        with open(path / "entries.jsonl") as f:
            self.entries = [Entry(**json.loads(line)) for line in f if line.strip()]
        self.index = faiss.read_index_binary(str(path / "pdq.faissbin"))
        if self.index.ntotal != len(self.entries):
            raise ValueError(f"{path}: {self.index.ntotal} hashes for {len(self.entries)} entries")
        self.embedder: dict[str, Any] | None = self.meta.get("embedder")
        self.search_vectors_raw: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
        """``(queries, k) -> (distances, rows)`` over this generation's vectors, local or in Qdrant (None: none)."""
        q = self.meta.get("qdrant")
        if self.embedder is not None and q is not None:
            from dangerclip.runtime.index.qdrant import QdrantVectors

            self.search_vectors_raw = QdrantVectors(qdrant or q["location"], q["collection"], len(self.entries)).search
        elif self.embedder is not None:
            local = vectors.load(path / "vectors.faiss")
            if local.ntotal != len(self.entries):
                raise ValueError(f"{path}: {local.ntotal} embeddings for {len(self.entries)} entries")
            self.search_vectors_raw = functools.partial(vectors.search, local)

    def embeddings(self) -> np.ndarray | None:
        """The stored ``[N, D]`` vectors (for a writer changing this generation), or None."""
        return None if self.embedder is None else np.load(self.path / "embeddings.npy")

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        if self.search_vectors_raw is None:
            return [[] for _ in range(len(queries))]
        dist, rows = self.search_vectors_raw(queries, k)
        limit = self.embedder.get("match_distance") if self.embedder else None
        return [
            [
                Match(
                    self.entries[i].id,
                    self.entries[i].label,
                    round(float(d), 4),
                    "embedding",
                    None if limit is None else bool(d <= limit),
                )
                for d, i in zip(drow, irow, strict=True)
                if i >= 0
            ]
            for drow, irow in zip(dist, rows, strict=True)
        ]

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
        qdrant: keep the vectors in Qdrant at this location (``http(s)://…``, ``:memory:``, ``path:DIR``) instead of
            a local faiss file (:mod:`dangerclip.runtime.index.qdrant`).
        collection_prefix: Qdrant collections are named ``<prefix>-<generation>``.
    """

    def __init__(
        self,
        root: str | Path,
        threshold: int = DEFAULT_THRESHOLD,
        keep: int = 2,
        qdrant: str | None = None,
        collection_prefix: str = "dangerclip",
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self.keep = keep
        self.qdrant = qdrant
        self.collection_prefix = collection_prefix

    def _live(self) -> _Generation | None:
        gen = current_generation(self.root)
        return None if gen is None else _Generation(gen)

    def entries(self) -> list[Entry]:
        live = self._live()
        return [] if live is None else live.entries

    def write(
        self, entries: Iterable[Entry], embeddings: np.ndarray | None = None, embedder: dict[str, Any] | None = None
    ) -> Path:
        """Write ``entries`` as the new live generation (ids must be unique) and return its folder.

        Args:
            embeddings: ``[N, D]`` vectors of the entries, in their order (the embedding signal), from ``embedder``
                (:func:`embedder_identity` of its card).
        """
        import faiss

        entries = list(entries)
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"duplicate ids in the index: {dup}")
        if (embeddings is None) != (embedder is None):
            raise ValueError("embeddings and the embedder they came from go together")
        if embeddings is not None and embedder is not None and embeddings.shape != (len(entries), embedder["dim"]):
            raise ValueError(f"{embeddings.shape} embeddings for {len(entries)} entries ({embedder['dim']}-d embedder)")
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
        meta: dict[str, Any] = {"entries": len(entries), "threshold": self.threshold, "created_at": time.time()}
        meta["signals"] = ["pdq"]
        if embeddings is not None:
            unit = vectors.unit(embeddings)
            np.save(tmp / "embeddings.npy", unit)
            meta["signals"].append("embedding")
            location = self._qdrant_location()
            if location is not None:
                from dangerclip.runtime.index import qdrant

                collection = f"{self.collection_prefix}-{name}"
                qdrant.write(location, collection, unit)  # before the switch: a reader never sees it half-full
                meta["qdrant"] = {"location": location, "collection": collection}
                meta["embedder"] = dict(embedder or {}, search="qdrant")
            else:
                vindex = vectors.build(unit)
                vectors.save(vindex, tmp / "vectors.faiss")
                meta["embedder"] = dict(embedder or {}, search=vectors.kind(vindex))
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

    def _qdrant_location(self) -> str | None:
        """Where the vectors go: the writer's Qdrant, else the live generation's (a change keeps the backend)."""
        if self.qdrant is not None:
            return self.qdrant
        gen = current_generation(self.root)
        meta = gen / "meta.json" if gen is not None else None
        q = json.loads(meta.read_text()).get("qdrant") if meta is not None and meta.is_file() else None
        return None if q is None else str(q["location"])

    def _prune(self, live: Path) -> None:
        gens = sorted((p for p in self.root.glob("gen-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in gens[: max(0, len(gens) - self.keep)]:
            if old != live:
                q = json.loads((old / "meta.json").read_text()).get("qdrant") if (old / "meta.json").is_file() else None
                if q is not None:
                    from dangerclip.runtime.index import qdrant

                    qdrant.drop(self.qdrant or q["location"], q["collection"])
                shutil.rmtree(old, ignore_errors=True)

    def add(
        self,
        new: Iterable[Entry],
        replace: bool = False,
        embeddings: np.ndarray | None = None,
        embedder: dict[str, Any] | None = None,
    ) -> Path:
        """The live entries plus ``new``; an id already present is an error unless ``replace``. An index with
        embeddings takes new entries only with embeddings from the same embedder (and one without, only without).
        """
        live = self._live()
        new = list(new)
        held = live.embedder if live is not None else None
        current = {e.id: e for e in (live.entries if live is not None else [])}
        if current and (held is not None) != (embeddings is not None):
            why = f"embeddings from {held['name']}@{held['version']}" if held is not None else "no embeddings"
            raise ValueError(f"the index holds {why}: add with the same (or rebuild the index)")
        if held is not None and embedder is not None and not _same_embedder(held, embedder):
            raise ValueError(f"the index's embeddings come from {held!r}, these from {embedder!r}: rebuild the index")
        vecs: dict[str, np.ndarray] = {}
        if embeddings is not None:
            old = live.embeddings() if live is not None else None
            if old is not None:
                vecs = dict(zip(current, old, strict=True))
            vecs.update(zip((e.id for e in new), embeddings, strict=True))
        for e in new:
            if e.id in current and not replace:
                raise ValueError(f"id {e.id!r} is already in the index (pass replace to overwrite it)")
            current[e.id] = e
        if embeddings is None:
            return self.write(current.values())
        return self.write(current.values(), np.stack([vecs[i] for i in current]), embedder)

    def remove(self, ids: Iterable[str]) -> tuple[Path, int]:
        """The live entries without ``ids`` (compacted: removed entries leave no trace); returns the count removed."""
        drop = set(ids)
        live = self._live()
        entries = live.entries if live else []
        keep = [i for i, e in enumerate(entries) if e.id not in drop]
        kept = [entries[i] for i in keep]
        emb = live.embeddings() if live is not None else None
        if emb is None or live is None:
            return self.write(kept), len(entries) - len(kept)
        return self.write(kept, emb[keep].reshape(len(keep), -1), live.embedder), len(entries) - len(kept)


def entry_for_image(img: Image.Image, id: str, label: str | None = None, source: str = "") -> Entry:
    h, quality = pdq_hash(img)
    return Entry(id=id, label=label, pdq=to_hex(h), quality=quality, source=source, added_at=time.time())


class IndexReader:
    """Queries the live generation; ``reload_if_changed`` picks up a new one (a stat and a small read).

    Thread-safe: a query holds a reference to one generation for its whole run.

    Args:
        root: the index folder.
        embedder: a :class:`~dangerclip.runtime.embedder.Embedder`, for the embedding signal of an index built
            with the same one (with another, or none, only PDQ is searched, and the mismatch is logged).
        qdrant: where to reach the Qdrant holding the index's vectors, when not where the writer reached it (an
            in-cluster service name); ignored for an index with local vectors.
    """

    def __init__(self, root: str | Path, embedder: Any = None, qdrant: str | None = None) -> None:
        self.root = Path(root)
        self.embedder = embedder
        self.qdrant = qdrant
        self._lock = threading.Lock()
        self._gen: _Generation | None = None
        self._seen: str | None = None
        if not self.reload_if_changed():
            raise FileNotFoundError(f"no index at {self.root} (build one: dangerclip index build)")

    @property
    def searches_embeddings(self) -> bool:
        """Whether queries search the live generation's embeddings (it has some, from this reader's embedder)."""
        with self._lock:
            gen = self._gen
        return gen is not None and self._vectors_usable(gen)

    def _vectors_usable(self, gen: _Generation) -> bool:
        if gen.embedder is None or self.embedder is None:
            return False
        return _same_embedder(gen.embedder, embedder_identity(self.embedder.card))

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
        loaded = _Generation(gen, self.qdrant)
        with self._lock:
            self._gen, self._seen = loaded, gen.name
        log.info("index %s: loaded generation %s (%d entries)", self.root, gen.name, len(loaded.entries))
        if loaded.embedder is not None and not self._vectors_usable(loaded):
            mine = None if self.embedder is None else embedder_identity(self.embedder.card)
            log.error(
                "index %s holds embeddings from %s but this reader's embedder is %s: searching PDQ only",
                self.root,
                {k: loaded.embedder.get(k) for k in ("name", "version", "dim")},
                mine and {k: mine[k] for k in ("name", "version", "dim")},
            )
        return True

    def query_hashes(self, hashes: Sequence[bytes], k: int = 5) -> list[list[Match]]:
        with self._lock:
            gen = self._gen
        if gen is None:
            return [[] for _ in hashes]
        arr = np.stack([np.frombuffer(h, np.uint8) for h in hashes]) if hashes else np.zeros((0, 32), np.uint8)
        return gen.search(arr, k)

    def query_images(self, images: Sequence[Image.Image], k: int = 5) -> list[list[Match]]:
        """Each image's ``k`` nearest by PDQ, then (with a matching embedder) its ``k`` nearest by embedding."""
        with self._lock:
            gen = self._gen
        pdq = self.query_hashes([pdq_hash(img)[0] for img in images], k)
        if gen is None or not self._vectors_usable(gen):
            return pdq
        emb = gen.search_vectors(self.embedder.embed(images), k)
        return [a + b for a, b in zip(pdq, emb, strict=True)]

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
            "signals": gen.meta.get("signals", ["pdq"]),
            "embedder": gen.embedder,
        }
