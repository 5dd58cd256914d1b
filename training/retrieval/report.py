"""What a retrieval run shows people: each query's AP and top 10 (right or wrong), and a grid of queries with their
top results, a green frame for the same model and a red one for another (Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageOps

if TYPE_CHECKING:
    from training.retrieval.train import Split


def query_report(sp: Split, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per query of ``sp``, worst AP first: its file, AP, and its top 10 database files with ``same``."""
    out = []
    for i, (ap, top) in enumerate(zip(metrics["per_query_ap"], metrics["top10"], strict=True)):
        out.append(
            {
                "query": str(sp.q_paths[i]),
                "ap": round(float(ap), 4),
                "top10": [{"file": str(sp.db_paths[j]), "same": bool(sp.db_labels[j] == sp.q_labels[i])} for j in top],
            }
        )
    return sorted(out, key=lambda q: q["ap"])


def retrieval_grid(queries: list[dict[str, Any]], path: Path, image_size: int = 96, rows: int = 8, k: int = 6) -> Path:
    """A ``rows`` x (1 + ``k``) grid: half the rows the worst queries, half the best, each followed by its top ``k``
    (green frame: same model; red: another)."""
    chosen = queries[: rows // 2] + queries[-(rows - rows // 2) :] if len(queries) > rows else queries
    cell, pad = image_size, 4
    grid = Image.new("RGB", ((k + 1) * (cell + pad) + pad, len(chosen) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, q in enumerate(chosen):
        files = [(q["query"], None)] + [(t["file"], t["same"]) for t in q["top10"][:k]]
        for c, (f, same) in enumerate(files):
            x, y = pad + c * (cell + pad), pad + r * (cell + pad)
            with Image.open(f) as im:
                grid.paste(ImageOps.fit(im.convert("RGB"), (cell, cell)), (x, y))
            colour = "black" if same is None else ("#1a9641" if same else "#d7191c")
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=colour, width=3)
    grid.save(path)
    return path
