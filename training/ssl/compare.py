"""``dangerclip types compare``: every pre-training method and backbone on one split, plus the frozen CLIP of this
project (linear probe on its image embedding, and zero-shot over the class names), as one table.

The seed's finding to check: self-supervised pre-training (DINO, SimCLR) at least matches supervised pre-training
on the same images, and ViT + DINO is best. Every row uses the same splits, budget and downstream protocols.

A comparison takes hours on a CPU: a row whose folder already holds the figures of the same run (its
``metrics.json``, same config but for the folder, threads, device and version) is read back instead of run
again, so an interrupted compare goes on where it stopped (pre-training resumes after its last epoch), and
rows can be run by separate processes (one ``--methods`` each) and gathered by one last compare over them
all. A folder holding another run's figures is refused, naming what differs, rather than mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.modeling.device import resolve_device
from dangerclip.runtime.files import atomic_write_text, write_json
from training.ssl.config import TypeConfig, fits
from training.ssl.data import Item, Splits, keep_labels, read_splits
from training.ssl.run import run

log = logging.getLogger(__name__)
RUN_AGNOSTIC = ("out", "threads", "device", "version", "export")
"""Config fields that do not change a row's figures (what :func:`finished` ignores when it compares runs)."""
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
            if not fits(backbone, method):
                log.info("compare: %s / %s left out (MAE masks patches: ViT backbones only)", backbone, method)
                continue
            one = dataclasses.replace(cfg, backbone=backbone, method=method, out=str(out / f"{backbone}-{method}"))
            one = dataclasses.replace(one, export=False)
            f = finished(one, splits)
            if f is None:
                log.info("compare: %s / %s", backbone, method)
                f = run(one, splits)
            else:
                log.info("compare: %s / %s read back from %s", backbone, method, Path(one.out) / "metrics.json")
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
    labelled, _ = keep_labels(splits, cfg.label_fraction)
    if clip:
        rows += clip_rows(labelled, resolve_device(cfg.device))
    counts = {**labelled.counts(), "label_fraction": cfg.label_fraction}
    write_json(out / "compare.json", {"splits": counts, "rows": rows}, indent=1)
    table = markdown(rows, labelled, cfg.label_fraction)
    atomic_write_text(out / "compare.md", table + "\n")
    return table


def finished(cfg: TypeConfig, splits: Splits) -> dict[str, Any] | None:
    """The figures in ``cfg.out/metrics.json`` when they come from the same run as ``cfg`` (fields in
    :data:`RUN_AGNOSTIC` aside) on splits of the same sizes; None when there are none (absent or unreadable).

    Raises:
        ValueError: the folder holds the figures of another run (the fields that differ are named).
    """
    path = Path(cfg.out) / "metrics.json"
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(figures, dict) or not isinstance(figures.get("config"), dict):
        return None
    want = {k: v for k, v in cfg.to_dict().items() if k not in RUN_AGNOSTIC}
    # a field the row predates was at its default then
    stored = {**TypeConfig().to_dict(), **figures["config"]}
    have = {k: v for k, v in stored.items() if k not in RUN_AGNOSTIC}
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if figures.get("splits") != keep_labels(splits, cfg.label_fraction)[0].counts():
        diff.append("splits")
    if diff:
        raise ValueError(
            f"{path} holds another run's figures ({', '.join(diff)} differ): use another --out, or delete "
            f"{path.parent} to run that row again"
        )
    return figures


def markdown(rows: list[dict[str, Any]], splits: Splits, label_fraction: float = 1.0) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    c = splits.counts()
    few = (
        "" if label_fraction >= 1 else f" labelled ({label_fraction:.0%} of each class; the rest pre-train unlabelled)"
    )
    lines = [
        f"{c['classes']} classes; train {c['train']}{few}, val {c['val']}, test {c['test']} images. Test accuracy (%).",
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
