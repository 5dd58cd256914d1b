"""``dangerclip types compare``: every pre-training method and backbone on one split, plus the frozen CLIP of this
project (linear probe on its image embedding, and zero-shot over the class names), as one table.

The seed's finding to check: self-supervised pre-training (DINO, SimCLR) at least matches supervised pre-training
on the same images, and ViT + DINO is best. Every row uses the same splits, budget and downstream protocols.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.modeling.device import resolve_device
from dangerclip.runtime.files import atomic_write_text, write_json
from training.ssl.config import TypeConfig
from training.ssl.data import Item, Splits, read_splits
from training.ssl.run import run

log = logging.getLogger(__name__)
DEMO_BACKBONE = Path(__file__).resolve().parents[1] / "assets" / "demo_backbone.safetensors"


def compare(cfg: TypeConfig, methods: list[str], backbones: list[str], clip: bool = True) -> str:
    """Run each (backbone, method) into ``cfg.out/<backbone>-<method>``; write ``compare.json`` and
    ``compare.md`` to ``cfg.out`` and return the markdown table."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = read_splits(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    rows: list[dict[str, Any]] = []
    for backbone in backbones:
        for method in methods:
            one = dataclasses.replace(cfg, backbone=backbone, method=method, out=str(out / f"{backbone}-{method}"))
            one = dataclasses.replace(one, export=False)
            log.info("compare: %s / %s", backbone, method)
            f = run(one, splits)
            knn = [e["knn_val_accuracy"] for e in f["pretrain"]["history"]["epochs"] if "knn_val_accuracy" in e]
            rows.append(
                {
                    "backbone": backbone,
                    "method": method,
                    "probe": f["probe"]["test"]["accuracy"],
                    "finetune": f.get("finetune", {}).get("test", {}).get("accuracy"),
                    "knn_val": knn[-1] if knn else None,
                    "pretrain_s": f["pretrain"]["seconds"],
                    "ece_after": f["served"]["ece_after"],
                }
            )
    if clip:
        rows += clip_rows(splits, resolve_device(cfg.device))
    write_json(out / "compare.json", {"splits": splits.counts(), "rows": rows}, indent=1)
    table = markdown(rows, splits)
    atomic_write_text(out / "compare.md", table + "\n")
    return table


def markdown(rows: list[dict[str, Any]], splits: Splits) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    c = splits.counts()
    lines = [
        f"{c['classes']} classes; train {c['train']}, val {c['val']}, test {c['test']} images. Test accuracy (%).",
        "",
        "| backbone | pre-training | linear probe | fine-tune | k-NN (val) | pre-training s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = "–" if r.get("pretrain_s") is None else f"{r['pretrain_s']:.0f}"
        lines.append(
            f"| {r['backbone']} | {r['method']} | {pct(r['probe'])} | {pct(r.get('finetune'))} | "
            f"{pct(r.get('knn_val'))} | {s} |"
        )
    return "\n".join(lines)


def clip_rows(splits: Splits, device: torch.device) -> list[dict[str, Any]]:
    """The frozen CLIP of this project (the demo backbone, pre-trained on synthetic weapon scenes): a linear
    probe on its global embedding, and zero-shot over ``a photo of a {class}``."""
    from sklearn.linear_model import LogisticRegression

    from dangerclip.modeling.factory import create_model
    from dangerclip.runtime.preprocess import load_image, preprocess_batch

    if not DEMO_BACKBONE.is_file():
        log.warning("no %s: the frozen CLIP rows are left out", DEMO_BACKBONE)
        return []
    model = create_model("demo", pretrained=str(DEMO_BACKBONE)).eval().to(device)
    bb, pcfg = model.backbone, model.card.preprocess

    @torch.no_grad()
    def embed(items: list[Item]) -> np.ndarray:
        out = []
        for i in range(0, len(items), 64):
            x = preprocess_batch([load_image(it.path) for it in items[i : i + 64]], pcfg)
            g, _ = bb.encode_dense(torch.from_numpy(x).to(device))
            out.append(g.cpu().numpy())
        return np.concatenate(out)

    t0 = time.perf_counter()
    xtr, xva, xte = embed(splits.train), embed(splits.val), embed(splits.test)
    ytr, yva, yte = (np.array([i.label for i in s]) for s in (splits.train, splits.val, splits.test))
    best = max(
        (LogisticRegression(C=c, max_iter=2000).fit(xtr, ytr) for c in (0.1, 1.0, 10.0, 100.0)),
        key=lambda m: float((m.predict(xva) == yva).mean()),
    )
    probe = float((best.predict(xte) == yte).mean())
    with torch.no_grad():
        text = bb.encode_text(splits.classes, templates=("a photo of a {}",)).cpu().numpy()
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    zero = float(((xte @ text.T).argmax(1) == yte).mean())
    secs = time.perf_counter() - t0
    return [
        {"backbone": "frozen CLIP (demo)", "method": "none (linear probe)", "probe": probe, "pretrain_s": secs},
        {"backbone": "frozen CLIP (demo)", "method": "zero-shot over class names", "probe": zero, "pretrain_s": None},
    ]
