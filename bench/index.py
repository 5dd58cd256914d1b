#!/usr/bin/env python3
"""The known-content index at catalogue sizes: PDQ and embedding search, build and query cost, HNSW recall.

    .venv/bin/python bench/index.py                      # 10 000 and 100 000 entries
    .venv/bin/python bench/index.py --sizes 1000000      # a million (about 1.3 GB of vectors at D = 256)

In one run on one machine, per size: the build time and on-disk size of the PDQ index (faiss binary flat), of the
exact embedding index (inner-product flat) and of the HNSW graph the index switches to above 50 000 entries
(``dangerclip.runtime.index.vectors``); per query, p50 and p99 of queries searched one at a time and the
throughput of a batch (as the worker sends a batch's flagged images); HNSW's recall@10 against the exact search;
and memory per million entries (the on-disk size, which is what the reader maps). The vectors are clustered the way a
catalogue is (models, several photos each, noisy queries of catalogued models), so recall is not flattered by
uniform noise. Ratios are of figures measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def catalogue(n: int, dim: int, rng: np.random.Generator, per_model: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in clusters of ``per_model`` (a model's photos), and the cluster centres."""
    centres = rng.standard_normal((max(1, n // per_model), dim)).astype(np.float32)
    rows = centres[np.arange(n) % len(centres)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), centres


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    out = None
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t0) / repeat, out


def _latencies(search, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of each query searched alone (what one flagged image waits)."""
    out = []
    for k in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[k : k + 1])
        out.append(1000 * (time.perf_counter() - t0))
    return np.array(out)


def _file_mb(write, index) -> float:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "i"
        write(index, str(p))
        return p.stat().st_size / 2**20


def run(sizes: list[int], dim: int, queries: int, seed: int) -> list[dict[str, float]]:
    import faiss

    from dangerclip.runtime.index import vectors

    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        emb, centres = catalogue(n, dim, rng)
        q_idx = rng.integers(0, len(centres), queries)
        q = centres[q_idx] + 0.6 * rng.standard_normal((queries, dim)).astype(np.float32)  # a new photo of a model
        hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        q_hashes = hashes[rng.integers(0, n, queries)] ^ (rng.random((queries, 32)) < 0.05).astype(np.uint8)

        def pdq_build(h: np.ndarray = hashes) -> object:
            index = faiss.IndexBinaryFlat(256)
            index.add(h)
            return index

        t_pdq_build, pdq = _timed(pdq_build)
        t_exact_build, exact = _timed(lambda e=emb: vectors.build(e, exact_up_to=len(e)))
        t_hnsw_build, hnsw = _timed(lambda e=emb: vectors.build(e, exact_up_to=0))
        singles = {
            name: _latencies(fn, qs)
            for name, fn, qs in (
                ("pdq", lambda x, i=pdq: i.search(x, 10), q_hashes),  # type: ignore[attr-defined]
                ("exact", lambda x, i=exact: vectors.search(i, x, 10), q),
                ("hnsw", lambda x, i=hnsw: vectors.search(i, x, 10), q),
            )
        }
        t_pdq_q, _ = _timed(lambda i=pdq, h=q_hashes: i.search(h, 10), repeat=3)  # type: ignore[attr-defined]
        t_exact_q, (_, exact_ids) = _timed(lambda i=exact, v=q: vectors.search(i, v, 10), repeat=3)  # type: ignore[misc]
        t_hnsw_q, (_, hnsw_ids) = _timed(lambda i=hnsw, v=q: vectors.search(i, v, 10), repeat=3)  # type: ignore[misc]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, hnsw_ids, strict=True)]))
        rows.append(
            {
                "entries": n,
                "pdq_build_s": t_pdq_build,
                "exact_build_s": t_exact_build,
                "hnsw_build_s": t_hnsw_build,
                "pdq_query_ms": 1000 * t_pdq_q / queries,
                "exact_query_ms": 1000 * t_exact_q / queries,
                "hnsw_query_ms": 1000 * t_hnsw_q / queries,
                **{f"{k}_p{p}_ms": float(np.percentile(v, p)) for k, v in singles.items() for p in (50, 99)},
                "hnsw_recall10": recall,
                "pdq_mb": _file_mb(faiss.write_index_binary, pdq),
                "exact_mb": _file_mb(faiss.write_index, exact),
                "hnsw_mb": _file_mb(faiss.write_index, hnsw),
            }
        )
        r = rows[-1]
        print(
            f"{n:>9,} entries | build s: pdq {r['pdq_build_s']:.2f}, exact {r['exact_build_s']:.2f}, "
            f"hnsw {r['hnsw_build_s']:.1f} | ms/query: pdq {r['pdq_query_ms']:.3f}, exact {r['exact_query_ms']:.3f}, "
            f"hnsw {r['hnsw_query_ms']:.3f} (exact/hnsw {r['exact_query_ms'] / r['hnsw_query_ms']:.1f}x) | "
            f"hnsw recall@10 {r['hnsw_recall10']:.3f} | MB: pdq {r['pdq_mb']:.1f}, exact {r['exact_mb']:.1f}, "
            f"hnsw {r['hnsw_mb']:.1f}",
            flush=True,
        )
        per_m = 1e6 / n
        print(
            f"{'':>9}          | one query at a time, p50/p99 ms: pdq {r['pdq_p50_ms']:.3f}/{r['pdq_p99_ms']:.3f}, "
            f"exact {r['exact_p50_ms']:.3f}/{r['exact_p99_ms']:.3f}, hnsw {r['hnsw_p50_ms']:.3f}/{r['hnsw_p99_ms']:.3f}"
            f" | batched queries/s: exact {1000 / r['exact_query_ms']:,.0f}, hnsw {1000 / r['hnsw_query_ms']:,.0f}"
            f" | MB per million entries: pdq {r['pdq_mb'] * per_m:,.0f}, exact {r['exact_mb'] * per_m:,.0f}, "
            f"hnsw {r['hnsw_mb'] * per_m:,.0f}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated entry counts")
    ap.add_argument("--dim", type=int, default=256, help="embedding size (the small embedder's; VGG16's is 512)")
    ap.add_argument("--queries", type=int, default=256, help="queries per size, searched as one batch")
    ap.add_argument("--threads", type=int, default=0, help="faiss threads (0: its default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    run([int(s) for s in a.sizes.split(",")], a.dim, a.queries, a.seed)


if __name__ == "__main__":
    main()
