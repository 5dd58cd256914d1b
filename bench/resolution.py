#!/usr/bin/env python3
"""The cost of resolution: images/s of an exported DangerCLIP at 224, 336 and 448 px, as ratios to 224 px.

    .venv/bin/python bench/resolution.py                     # ViT-B-16 (random weights), batch 4
    .venv/bin/python bench/resolution.py --config tiny       # fast

All sizes are measured in the same run, on the same machine (ONNX Runtime fp32, CPU), so the ratios hold
whatever the CPU. ViT-B/16 attention grows with the square of the token count: 196 → 441 → 784 patches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="ViT-B-16")
    p.add_argument("--sizes", default="224,336,448")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per size")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    import onnxruntime as ort

    from dangerclip.modeling.export import export_onnx
    from dangerclip.modeling.factory import create_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in a.sizes.split(",")):
            model = create_model(a.config, pretrained="random", seed=0, image_size=size).eval()
            path = export_onnx(model, Path(tmp) / f"m{size}.onnx", check=False)
            opts = ort.SessionOptions()
            if a.threads:
                opts.intra_op_num_threads = a.threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal((a.batch, 3, size, size), dtype=np.float32)
            sess.run(None, {"images": x})  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                sess.run(None, {"images": x})
                n += a.batch
            rate = n / (time.perf_counter() - t0)
            rows.append((size, model.card.grid, rate))
            print(f"{size} px, grid {model.card.grid[0]}x{model.card.grid[1]}: {rate:.2f} images/s", flush=True)
    base = rows[0][2]
    print(f"\n{a.config}, batch {a.batch}, ONNX Runtime fp32 CPU")
    print("| size | patches | images/s | time per image vs 224 |")
    print("|---|---|---|---|")
    for size, grid, rate in rows:
        print(f"| {size} | {grid[0] * grid[1]} | {rate:.2f} | {base / rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
