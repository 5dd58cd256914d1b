"""The model's GPU ceiling in torch: images/s of the whole DangerCLIP at bf16 and fp32, batch 32 and 128.

    .venv/bin/python bench/gpu_ceiling.py                         # ViT-B-16 (random weights) on the GPU
    .venv/bin/python bench/gpu_ceiling.py --config tiny --batches 2 --device cpu --seconds 0.5   # a CPU dry run

The sizing anchor for GPU workers where onnxruntime's GPU providers cannot be measured (the serving path is
onnxruntime: TensorRT → CUDA → CPU; this is what the same arithmetic does in torch). Random weights are fine: the
arithmetic is the same. The device's own matrix-product peak (bf16 and fp32, 8192² on a GPU) is measured in the
same run, so the achieved share of it is honest on whatever card runs it; FLOPs per image are counted by torch,
not assumed. Without a GPU it says so and measures the CPU instead (``--device cpu``), never silently.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import count_flops, timed  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """TFLOP/s of an ``n``² matrix product on ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        a @ b
        sync(device)

    return 2 * n**3 / timed(run, warmup=2, min_iters=3, min_seconds=seconds) / 1e12


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ViT-B-16")
    p.add_argument("--batches", default="32,128", help="comma-separated batch sizes")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda, cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    a = p.parse_args(argv)
    from dangerclip.modeling.factory import create_model

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    if device.type == "cpu":
        print("no GPU here: these are CPU figures, not the GPU ceiling", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    model = create_model(a.config, pretrained="random", seed=0).eval().to(device)
    size = model.card.preprocess.image_size
    gflop = count_flops(model, torch.randn(1, 3, size, size, device=device)) / 1e9
    n = 8192 if device.type == "cuda" else 1024
    peaks = {
        "bf16": peak(device, torch.bfloat16, n, a.seconds / 2),
        "fp32": peak(device, torch.float32, n, a.seconds / 2),
    }
    print(f"{a.config} at {size} px, {gflop:.1f} GFLOP an image, on {name}")
    print(f"matmul peak ({n}²): bf16 {peaks['bf16']:.1f} TFLOP/s, fp32 {peaks['fp32']:.1f} TFLOP/s")
    print("| precision | batch | images/s | ms per batch | TFLOP/s | share of the matmul peak | peak memory GiB |")
    print("|---|---|---|---|---|---|---|")
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for batch in (int(b) for b in a.batches.split(",")):
            x = torch.randn(batch, 3, size, size, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def run(x: torch.Tensor = x, dtype: torch.dtype = dtype) -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    model(x)
                sync(device)

            t0 = time.perf_counter()
            try:
                sec = timed(run, warmup=2, min_iters=3, min_seconds=a.seconds)
            except torch.OutOfMemoryError:
                print(f"| {dtype_name} | {batch} | out of memory after {time.perf_counter() - t0:.0f} s | | | | |")
                continue
            tflops = gflop * batch / sec / 1e3
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            print(
                f"| {dtype_name} | {batch} | {batch / sec:.1f} | {1e3 * sec:.1f} | {tflops:.2f} | "
                f"{tflops / peaks[dtype_name]:.0%} | {mem:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
