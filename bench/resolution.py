#!/usr/bin/env python3
"""The cost and the gain of resolution: a DangerCLIP at 224, 336 and 448 px.

    .venv/bin/python bench/resolution.py                     # cost: ViT-B-16 (random weights), batch 4
    .venv/bin/python bench/resolution.py --config tiny       # cost, fast
    .venv/bin/python bench/resolution.py --train             # gain: train the demo head at each size, small weapons

Cost: images/s of the exported model in ONNX Runtime (fp32, CPU) at each size, as ratios to the first, all in
one run on one machine, so the ratios hold whatever the CPU. ViT-B/16 attention grows with the square of the
token count: 196 → 441 → 784 patches.

Gain (``--train``): a synthetic set drawn at 448 px with small weapons (an object's length 0.1–0.45 of the
side, so two thirds of the weapons cover under 1/49 of the image, COCO's "small" at 224 px); the demo head
trained on the committed demo backbone (pre-trained at 224 px, position embeddings interpolated) at each size
with the same data, steps and seed; recall, pointing and top-k IoU on the held-out split by object size, and
the trained model's own images/s. The set and each run are kept under ``--work`` and reused when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def images_per_second(path: Path, size: int, batch: int, seconds: float, threads: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    sess.run(None, {"images": x})  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"images": x})
        n += batch
    return n / (time.perf_counter() - t0)


def cost(a: argparse.Namespace) -> int:
    from dangerclip.modeling.export import export_onnx
    from dangerclip.modeling.factory import create_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            model = create_model(a.config, pretrained="random", seed=0, image_size=size).eval()
            path = export_onnx(model, Path(tmp) / f"m{size}.onnx", check=False)
            rate = images_per_second(path, size, a.batch, a.seconds, a.threads)
            rows.append((size, model.card.grid, rate))
            print(f"{size} px, grid {model.card.grid[0]}x{model.card.grid[1]}: {rate:.2f} images/s", flush=True)
    base = rows[0][2]
    print(f"\n{a.config}, batch {a.batch}, ONNX Runtime fp32 CPU")
    print("| size | patches | images/s | time per image vs 224 |")
    print("|---|---|---|---|")
    for size, grid, rate in rows:
        print(f"| {size} | {grid[0] * grid[1]} | {rate:.2f} | {base / rate:.2f}x |")
    return 0


def synthetic_set(work: Path, n: int, seed: int) -> Path:
    from training.synth.config import SynthConfig
    from training.synth.dataset import generate

    manifest = work / "data" / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    cfg = SynthConfig(n=n, seed=seed, size=448, min_scale=0.1, max_scale=0.45, test_fraction=0.2)
    return generate(work / "data", cfg, workers=2)


def train_at(size: int, manifest: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) the demo head at ``size``; its test figures and the run's seconds."""
    import dataclasses

    from training.demo_model.config import DEMO_BACKBONE, demo_head
    from training.train import train

    out = work / f"s{size}"
    done = out / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = dataclasses.replace(
        demo_head(),
        data=str(manifest),
        model="demo",
        pretrained=str(DEMO_BACKBONE),
        image_size=size,
        out=str(out),
        cache_dir=str(work / f"cache{size}"),
        iterations=a.iterations,
        color_views=0,
        grayscale=0.0,
        threads=a.threads or 2,
        export=True,
        report=False,
    )
    res = train(cfg)
    if res.onnx is None or "test" not in res.metrics:
        raise SystemExit(f"the {size} px run did not finish (no model.onnx or no test split)")
    test = res.metrics["test"]
    weapon = test["per_category"]["weapon"]
    rec = {
        "size": size,
        "grid": list(res.model.card.grid),
        "seconds": round(res.seconds, 1),
        "f1": weapon["f1"],
        "ap": weapon["ap"],
        "by_size": weapon["by_size"],
        "onnx": str(res.onnx),
    }
    done.write_text(json.dumps(rec, indent=1))
    return rec


def gain(a: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(a.work)
    manifest = synthetic_set(work, a.n, a.seed)
    recs = [train_at(size, manifest, work, a) for size in a.sizes]
    for r in recs:  # timed after all training, one after another, so every rate sees the same machine state
        r["images_per_s"] = images_per_second(Path(r["onnx"]), r["size"], a.batch, a.seconds, a.threads)

    def f(v: float) -> str:
        return "–" if v != v else f"{v:.3f}"

    base = recs[0]["images_per_s"]
    n = {b: recs[0]["by_size"][b]["n"] for b in ("small", "medium")}
    print(f"\ndemo backbone + head, {a.iterations} steps per size; held-out synthetic split, weapons by size:")
    print(f"small (under 1/49 of the image) n = {n['small']}, medium n = {n['medium']}; cost: ONNX Runtime fp32 CPU")
    print(
        "| size | patches | F1 | AP | recall small | recall medium | pointing small | pointing medium "
        "| top-k IoU small | images/s | time per image | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        s, m = r["by_size"]["small"], r["by_size"]["medium"]
        print(
            f"| {r['size']} | {r['grid'][0] * r['grid'][1]} | {f(r['f1'])} | {f(r['ap'])} | {f(s['recall'])} | "
            f"{f(m['recall'])} | {f(s['pointing'])} | {f(m['pointing'])} | {f(s['topk_iou'])} | "
            f"{r['images_per_s']:.1f} | {base / r['images_per_s']:.2f}x | {r['seconds']:.0f} |"
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="ViT-B-16", help="model config of the cost run")
    p.add_argument("--sizes", default="224,336,448")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per size")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--train", action="store_true", help="measure the gain: train the demo head at each size")
    p.add_argument("--work", default="runs/resolution", help="--train: the set, caches and runs (reused)")
    p.add_argument("-n", type=int, default=3000, help="--train: images in the synthetic set")
    p.add_argument("--seed", type=int, default=4480, help="--train: seed of the synthetic set")
    p.add_argument("--iterations", type=int, default=1000, help="--train: head steps per size")
    a = p.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    return gain(a) if a.train else cost(a)


if __name__ == "__main__":
    sys.exit(main())
