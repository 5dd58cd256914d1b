"""The embedding signal of an index: unit vectors from a retrieval embedder, searched by inner product.

PDQ finds the same picture again; an embedding finds the same *firearm model* in another picture (DeepFirearm's
retrieval). Up to :data:`EXACT_UP_TO` vectors the search is exact (faiss ``IndexFlatIP``); above, an HNSW graph
(``IndexHNSWFlat``, M = 32, efSearch = 128), whose recall@10 against exact search ``bench/index.py`` measures.
Distances are Euclidean between unit vectors, ``sqrt(2 - 2 cos)``, the scale the embedder card's
``match_distance`` is calibrated on. A reader memory-maps the index file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXACT_UP_TO = 50_000
"""Above this many vectors, the index is an HNSW graph instead of an exact scan."""
HNSW_M = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 80


def unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build(vectors: np.ndarray, exact_up_to: int | None = None) -> Any:
    """A faiss index over ``[N, D]`` vectors (normalised here): exact up to ``exact_up_to`` (default
    :data:`EXACT_UP_TO`), else HNSW."""
    import faiss

    v = unit(vectors)
    d = v.shape[1]
    index: Any
    if len(v) <= (EXACT_UP_TO if exact_up_to is None else exact_up_to):
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    if len(v):
        index.add(v)
    return index


def save(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load(path: Path) -> Any:
    """The index at ``path``, memory-mapped: the pages a search touches come from the file (shared between workers
    on one node, and out of the process's heap), so a million-entry catalogue does not cost each worker 1 GB."""
    import faiss

    # IO_FLAG_MMAP_IFC maps flat and HNSW storage in place (faiss >= 1.10); plain IO_FLAG_MMAP copies flat codes.
    index = faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP))
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = HNSW_EF_SEARCH  # not stored in the file
    return index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, rows)``, each ``[Q, k']`` best first, ``k' = min(k, N)``; Euclidean distances of unit vectors."""
    k = min(k, index.ntotal)
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    sims, rows = index.search(unit(queries), k)
    return np.sqrt(np.clip(2 - 2 * sims, 0, None)), rows


def kind(index: Any) -> str:
    return "hnsw" if hasattr(index, "hnsw") else "exact"
