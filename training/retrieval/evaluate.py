"""Retrieval evaluation as DeepFirearm reports it: L2 → PCA fitted on the database (no whitening) → L2, then
mAP with trapezoidal AP and CMC rank-k (share of queries with a same-class image in the top k)."""

from __future__ import annotations

import numpy as np

RANKS = (1, 2, 4, 8, 16, 32)


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca(database: np.ndarray, queries: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Project both onto the database's top ``dim`` principal directions (centred on its mean; no whitening)."""
    if dim >= database.shape[1]:
        return l2(database), l2(queries)
    mean = database.mean(0)
    _, _, vt = np.linalg.svd(database - mean, full_matrices=False)
    p = vt[:dim].T
    return l2((database - mean) @ p), l2((queries - mean) @ p)


def average_precision(ranked_same: np.ndarray) -> float:
    """Trapezoidal AP of one query's ranked relevance (the Oxford/Paris ``compute_ap``)."""
    n_pos = int(ranked_same.sum())
    if n_pos == 0:
        return 0.0
    ap = 0.0
    recall_step = 1.0 / n_pos
    hits = 0
    for k, rel in enumerate(ranked_same):
        if not rel:
            continue
        precision_before = hits / k if k > 0 else 1.0
        hits += 1
        precision_after = hits / (k + 1)
        ap += (precision_before + precision_after) / 2 * recall_step
    return ap


def retrieval_metrics(db: np.ndarray, db_labels: np.ndarray, q: np.ndarray, q_labels: np.ndarray) -> dict[str, object]:
    """mAP, CMC at :data:`RANKS` and each query's AP and top-10 (indices into the database)."""
    sims = l2(q) @ l2(db).T
    order = np.argsort(-sims, axis=1)
    same = db_labels[order] == q_labels[:, None]
    aps = np.array([average_precision(row) for row in same])
    cmc = {f"rank{k}": float(same[:, :k].any(1).mean()) for k in RANKS}
    return {"mAP": float(aps.mean()), **cmc, "per_query_ap": aps.tolist(), "top10": order[:, :10].tolist()}
