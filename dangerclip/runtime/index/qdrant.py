"""The embedding signal kept in Qdrant, for catalogues that outgrow one machine (``pip install
'dangerclip[qdrant]'``).

The index folder stays the source of truth (entries, PDQ hashes, the vectors as ``embeddings.npy``) and keeps its
generations; only the vector search moves: each generation's vectors go into a Qdrant collection of their own,
named after the generation (``<prefix>-gen-…``), whose point ids are the rows of ``entries.jsonl``. A rebuild
uploads a new collection before ``CURRENT`` switches to it, so a reader never searches half a catalogue, and the
collections of pruned generations are dropped. A location is an ``http(s)://`` URL of a Qdrant server, or, for
qdrant-client's local mode (tests, a laptop), ``:memory:`` or ``path:<folder>``.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Any

import numpy as np

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
BATCH = 1024


@atexit.register
def _close_all() -> None:
    """Close the clients before the interpreter tears their modules down (local mode flushes its storage)."""
    with _LOCK:
        for c in _CLIENTS.values():
            with contextlib.suppress(Exception):
                c.close()
        _CLIENTS.clear()


def client(location: str) -> Any:
    """One client per location per process (qdrant-client's local mode locks its folder to one client)."""
    from qdrant_client import QdrantClient

    with _LOCK:
        if location not in _CLIENTS:
            if location == ":memory:":
                _CLIENTS[location] = QdrantClient(location=":memory:")
            elif location.startswith("path:"):
                _CLIENTS[location] = QdrantClient(path=location[len("path:") :])
            elif location.startswith(("http://", "https://")):
                _CLIENTS[location] = QdrantClient(url=location)
            else:
                raise ValueError(f"not a Qdrant location: {location!r} (http(s)://host:port, :memory: or path:DIR)")
        return _CLIENTS[location]


def write(location: str, collection: str, vectors: np.ndarray) -> None:
    """A new collection ``collection`` holding ``vectors`` (unit rows) with point id = row (replaced if it exists)."""
    from qdrant_client import models

    c = client(location)
    if c.collection_exists(collection):
        c.delete_collection(collection)
    c.create_collection(
        collection, vectors_config=models.VectorParams(size=int(vectors.shape[1]), distance=models.Distance.COSINE)
    )
    for start in range(0, len(vectors), BATCH):
        chunk = vectors[start : start + BATCH]
        c.upsert(collection, points=models.Batch(ids=list(range(start, start + len(chunk))), vectors=chunk.tolist()))


def drop(location: str, collection: str) -> None:
    c = client(location)
    if c.collection_exists(collection):
        c.delete_collection(collection)


class QdrantVectors:
    """A generation's vectors in a Qdrant collection, searched like the local faiss index."""

    def __init__(self, location: str, collection: str, ntotal: int) -> None:
        self.location = location
        self.collection = collection
        self.ntotal = ntotal
        count = client(location).count(collection, exact=True).count
        if count != ntotal:
            raise ValueError(f"Qdrant collection {collection} at {location} holds {count} vectors, not {ntotal}")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` best first: Euclidean distances of unit vectors, from Qdrant's cosine scores
        (queries are normalised here, as ``vectors.search`` does)."""
        from qdrant_client import models

        from dangerclip.runtime.index.vectors import unit

        k = min(k, self.ntotal)
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        requests = [models.QueryRequest(query=q.tolist(), limit=k) for q in unit(queries)]
        answers = client(self.location).query_batch_points(self.collection, requests=requests)
        dist = np.full((len(queries), k), np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for i, a in enumerate(answers):
            for j, p in enumerate(a.points[:k]):
                dist[i, j] = np.sqrt(max(0.0, 2 - 2 * float(p.score)))
                rows[i, j] = int(p.id)
        return dist, rows
