"""Model throughput: torch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8, in one run.

    .venv/bin/python bench/bench_model.py                 # ViT-B-16 (random weights), batch 1 and 8
    .venv/bin/python bench/bench_model.py --config tiny --batch-sizes 1 8 32

Random weights are fine: the arithmetic is the same. Prints images/s, the ratio to torch eager, and the
achieved GFLOP/s, with the FLOPs per image counted by torch's FlopCounterMode (backbone alone and the whole
model) rather than assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # Count with the fused attention fast path off: FlopCounterMode cannot see inside
    # torch._native_multi_head_attention, and would miss most of open_clip's attention blocks.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(fc.get_total_flops())


def timed(fn, warmup: int, min_iters: int, min_seconds: float) -> float:
    """Seconds per call: median of repeated calls after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ViT-B-16")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)

    import onnxruntime as ort

    from dangerclip.modeling.export import check_images, export_int8, export_onnx
    from dangerclip.modeling.factory import create_model

    torch.set_num_threads(a.threads)
    model = create_model(a.config, pretrained="random", seed=0).eval()
    s = model.card.preprocess.image_size
    x1 = torch.from_numpy(check_images(model, n=1))
    flops_backbone = count_flops(model.backbone.encode_dense, x1)
    flops_full = count_flops(model, x1)

    tmp = Path(tempfile.mkdtemp(prefix="dangerclip-bench-"))
    fp32 = export_onnx(model, tmp / "m.onnx")
    int8 = tmp / "m.int8.onnx"
    dev8 = export_int8(fp32, int8, check_images(model, n=8))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    sessions = {
        "onnxruntime fp32": ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"]),
        "onnxruntime int8": ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"]),
    }
    rows = []
    for b in a.batch_sizes:
        xb = torch.randn(b, 3, s, s)
        xn = xb.numpy()
        with torch.inference_mode():
            t = timed(lambda xb=xb: model(xb), 2, 3, a.min_seconds)
        base = b / t
        rows.append({"engine": "torch eager fp32", "batch": b, "images_per_s": base})
        for name, sess in sessions.items():
            t = timed(lambda sess=sess, xn=xn: sess.run(None, {"images": xn}), 2, 3, a.min_seconds)
            rows.append({"engine": name, "batch": b, "images_per_s": b / t})
        for r in rows[-3:]:
            r["vs_torch"] = r["images_per_s"] / base
            r["gflop_per_s"] = r["images_per_s"] * flops_full / 1e9

    print(f"DangerCLIP {a.config}, {a.threads} CPU threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"FLOPs per image: backbone {flops_backbone / 1e9:.1f} GFLOP, whole model {flops_full / 1e9:.1f} GFLOP")
    print(f"INT8 deviation from fp32 on 8 images: max |Δscore| {dev8['score_max']:.4f}")
    print(f"{'engine':<20} {'batch':>5} {'images/s':>10} {'vs torch':>9} {'GFLOP/s':>9}")
    for r in rows:
        print(
            f"{r['engine']:<20} {r['batch']:>5} {r['images_per_s']:>10.2f} "
            f"{r['vs_torch']:>8.2f}x {r['gflop_per_s']:>9.1f}"
        )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "config": a.config,
                    "threads": a.threads,
                    "flops_backbone": flops_backbone,
                    "flops_full": flops_full,
                    "int8_deviation": dev8,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
