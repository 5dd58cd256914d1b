#!/usr/bin/env python3
"""What the identification stage adds per flagged image, against detection, in one run.

    .venv/bin/python bench/identify.py                         # small type heads and embedder, the demo detector
    .venv/bin/python bench/identify.py --big                   # also the paper's sizes: ResNet-50, ViT-B/16 (224 px)

Per image, on this machine's CPU through onnxruntime, everything measured here in the same run: the bundled demo
detector (the detection every image pays), each type head (random weights: speed does not depend on them), the
retrieval embedder, a PDQ hash, and an index search (PDQ and embedding) over a 10 000-entry catalogue. The worker
runs the stage on flagged images only, so its cost per *input* is the figure times the flagged share; the table
gives both ratios at a 10 % flagged share (moderation streams are mostly benign).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_image_ms(run, images, repeat_s: float) -> float:
    run(images)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < repeat_s:
        run(images)
        n += len(images)
    return 1000 * (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="add ResNet-50 and ViT-B/16 type heads at 224 px")
    ap.add_argument("--batch", type=int, default=8, help="flagged images per call (one batch's flagged share)")
    ap.add_argument("--seconds", type=float, default=4.0, help="timing window per component")
    ap.add_argument("--flagged-share", type=float, default=0.1)
    a = ap.parse_args()

    import torch

    from dangerclip.modeling.retrieval import EmbeddingNet, export_embedder
    from dangerclip.modeling.retrieval import build_backbone as retrieval_backbone
    from dangerclip.modeling.typenet import TypeClassifier, build_backbone, export_type_head
    from dangerclip.runtime.embedder import Embedder, EmbedderCard
    from dangerclip.runtime.index import IndexReader, IndexWriter
    from dangerclip.runtime.index.pdq import pdq_hash
    from dangerclip.runtime.index.store import Entry, embedder_identity
    from dangerclip.runtime.scorer import DangerScorer
    from dangerclip.runtime.typehead import TypeCard, TypeHead
    from training.firearms.catalogue import make_catalogue
    from training.firearms.draw import draw_image

    torch.set_num_threads(1)
    cat = make_catalogue(10, seed=0)
    images = [draw_image(cat[i % len(cat)], i, 256) for i in range(a.batch)]
    rows: list[tuple[str, float]] = []
    detector = DangerScorer(ROOT / "dangerclip" / "assets" / "demo" / "model.onnx", providers="cpu")
    detect_ms = per_image_ms(lambda ims: detector.score_images(ims, batch_size=len(ims)), images, a.seconds)
    with tempfile.TemporaryDirectory() as d:
        heads = ["resnet-small", "vit-small"] + (["resnet50", "vit-b-16"] if a.big else [])
        for name in heads:
            backbone, spec = build_backbone(name)
            card = TypeCard(name=name, version="bench", classes=[f"t{i}" for i in range(8)], image_size=spec.image_size)
            path = export_type_head(
                TypeClassifier(backbone, spec.feature_dim, 8).eval(), card, Path(d) / f"{name}.onnx"
            )
            head = TypeHead(path)
            rows.append((f"type head {name} ({spec.image_size} px)", per_image_ms(head.predict, images, a.seconds)))
        backbone, dim = retrieval_backbone("small")
        ecard = EmbedderCard(name="small", version="bench", dim=dim, image_size=96, match_distance=0.8)
        embedder = Embedder(export_embedder(EmbeddingNet(backbone, dim).eval(), ecard, Path(d) / "embedder.onnx"))
        rows.append(("embedder small (96 px)", per_image_ms(embedder.embed, images, a.seconds)))
        rows.append(("PDQ hash", per_image_ms(lambda ims: [pdq_hash(im) for im in ims], images, a.seconds)))
        rng = np.random.default_rng(0)
        n = 10_000
        entries = [
            Entry(id=str(i), label=None, pdq=bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex()) for i in range(n)
        ]
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        IndexWriter(Path(d) / "idx").write(entries, vectors, embedder_identity(embedder.card))
        reader = IndexReader(Path(d) / "idx", embedder=embedder)
        hashes = [pdq_hash(im)[0] for im in images]
        rows.append(
            (
                f"index search, PDQ ({n:,} entries)",
                per_image_ms(lambda hs: reader.query_hashes(hs, 3), hashes, a.seconds),
            )
        )
        both = per_image_ms(lambda ims: reader.query_images(ims, 3), images, a.seconds)
        rows.append((f"index query, PDQ + embedding ({n:,}; hashing and embedding included)", both))
    share = a.flagged_share
    print(f"detection (demo model, batch {a.batch}): {detect_ms:.2f} ms per image (onnxruntime's default threads)")
    print(f"| per flagged image | ms | × detection | per input at {share:.0%} flagged |")
    print("|---|---:|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {ms / detect_ms:.2f} | +{100 * share * ms / detect_ms:.1f} % |")


if __name__ == "__main__":
    main()
