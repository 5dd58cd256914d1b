#!/usr/bin/env python3
"""CPU speed toward the hardware limit: fp32 vs dynamic INT8 vs static QDQ INT8, with the machine's peaks.

    .venv/bin/python bench/quantize.py                     # the bundled demo model (trained), 1000 held-out images
    .venv/bin/python bench/quantize.py --config ViT-B-16   # speed of the paper's model (random weights)

Everything in one run on one machine: the int8 and fp32 matrix-product peaks of this CPU in onnxruntime
(a 2048² MatMulInteger and MatMul) and in torch/oneDNN (fp32, bf16, int8), images/s of each precision at
batch 1 and 8, and — for a trained model — the share of decisions (flagged or not, per category, at the
card's thresholds) unchanged from fp32 on held-out synthetic images (>= 99 % required) and the largest score
change.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DEMO = Path(__file__).resolve().parents[1] / "dangerclip" / "assets" / "demo" / "model.safetensors"


def _rate(run, n: int, seconds: float) -> float:
    run()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        k += n
    return k / (time.perf_counter() - t0)


def peaks(seconds: float) -> dict[str, float]:
    """GOP/s of a 2048² matrix product in onnxruntime on this CPU: ``int8`` is uint8 activations × int8 weights
    (what the quantised models run, and the pairing VNNI multiplies natively), ``int8 s8s8`` both signed (MLAS
    has no fast path for it on some CPUs), ``fp32`` a MatMul."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = 2048
    out = {}
    rng = np.random.default_rng(0)
    for name, op, (ta, tb), (da, db) in (
        ("int8", "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8), (np.uint8, np.int8)),
        ("int8 s8s8", "MatMulInteger", (TensorProto.INT8, TensorProto.INT8), (np.int8, np.int8)),
        ("fp32", "MatMul", (TensorProto.FLOAT, TensorProto.FLOAT), (np.float32, np.float32)),
    ):
        out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["c"])],
            name.replace(" ", "_"),
            [helper.make_tensor_value_info("a", ta, [n, n]), helper.make_tensor_value_info("b", tb, [n, n])],
            [helper.make_tensor_value_info("c", out_type, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString())

        def draw(dtype: type) -> np.ndarray:
            if dtype == np.float32:
                return rng.standard_normal((n, n)).astype(np.float32)
            lo, hi = (0, 255) if dtype == np.uint8 else (-100, 100)
            return rng.integers(lo, hi, (n, n)).astype(dtype)

        a, b = draw(da), draw(db)
        rate = _rate(lambda s=sess, a=a, b=b: s.run(None, {"a": a, "b": b}), 1, seconds)
        out[name] = 2 * n**3 * rate / 1e9
    return out


def torch_peaks(seconds: float) -> dict[str, float]:
    """GOP/s of a 2048² matrix product in torch on this CPU (oneDNN): fp32, bf16 and int8 (``torch._int_mm``),
    what the hardware gives when a kernel uses its units; None where torch has no such kernel here."""
    import torch

    n = 2048
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    for name, make in (
        ("fp32", lambda: torch.randn(n, n, generator=g)),
        ("bf16", lambda: torch.randn(n, n, generator=g).to(torch.bfloat16)),
        ("int8", lambda: torch.randint(-100, 100, (n, n), generator=g, dtype=torch.int8)),
    ):
        a, b = make(), make()
        mm = torch._int_mm if name == "int8" else torch.matmul
        try:
            rate = _rate(lambda mm=mm, a=a, b=b: mm(a, b), 1, seconds)
        except RuntimeError:  # no kernel for this type on this build/CPU
            continue
        out[name] = 2 * n**3 * rate / 1e9
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="", help="a config with random weights instead of the demo model")
    p.add_argument("--images", type=int, default=1000, help="held-out images for calibration (half) and agreement")
    p.add_argument("--seconds", type=float, default=6.0)
    a = p.parse_args()
    from dangerclip.modeling.checkpoint import load_checkpoint
    from dangerclip.modeling.export import ExportError, export_int8, export_onnx, onnx_deviation
    from dangerclip.modeling.factory import create_model
    from dangerclip.modeling.quantize import qdq_matmuls, quantize_static_qdq
    from dangerclip.runtime.preprocess import load_image, preprocess_batch
    from dangerclip.runtime.scorer import DangerScorer
    from training.synth.config import SynthConfig
    from training.synth.dataset import generate

    pk = peaks(a.seconds / 2)
    print(
        "CPU peaks (onnxruntime, 2048² matmul): " + ", ".join(f"{k} {v:.0f} GOP/s" for k, v in pk.items()), flush=True
    )
    tp = torch_peaks(a.seconds / 2)
    print("CPU peaks (torch/oneDNN, 2048² matmul): " + ", ".join(f"{k} {v:.0f} GOP/s" for k, v in tp.items()))
    model = (create_model(a.config, pretrained="random", seed=0) if a.config else load_checkpoint(DEMO)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "held_out", SynthConfig(n=a.images, seed=7, start=5_000_000))
        files = sorted(p for p in (tmp / "held_out").rglob("*.jpg"))[: a.images]
        batch = preprocess_batch([load_image(f) for f in files], model.card.preprocess)
        calib, check = batch[::2], batch[1::2]
        fp32 = export_onnx(model, tmp / "m.onnx", check_batch=check[:8])
        variants = [("fp32", fp32)]
        try:
            export_int8(fp32, tmp / "m.int8.onnx", check)
            variants.append(("int8 dynamic", tmp / "m.int8.onnx"))
        except ExportError as e:  # the gate's verdict is a result too
            print(f"int8 dynamic refused by the export gate: {e}", flush=True)
        for name, attention in (("int8 static QDQ", True), ("int8 static QDQ, attention in fp32", False)):
            st = tmp / f"m.qdq.{int(attention)}.onnx"
            try:
                quantize_static_qdq(fp32, st, calib, check, attention=attention)
                both, total = qdq_matmuls(st)
                print(f"{name}: {both} of {total} MatMuls take int8 on both inputs", flush=True)
                variants.append((name, st))
            except ExportError as e:  # the gate's verdict is a result too
                print(f"{name} refused by the export gate: {e}", flush=True)
        rows = []
        for name, path in variants:
            s = DangerScorer(path, providers="cpu")
            dev = onnx_deviation(fp32, path, check)  # decisions at the card's thresholds, as the scorer flags them
            agree = dev["decisions_unchanged"]
            r1 = _rate(lambda s=s: s.predict(check[:1]), 1, a.seconds)
            r8 = _rate(lambda s=s: s.predict(check[:8]), 8, a.seconds)
            rows.append((name, r1, r8, agree, dev))
            print(
                f"{name}: {r1:.1f} images/s at batch 1, {r8:.1f} at batch 8; decisions unchanged {100 * agree:.1f} %",
                flush=True,
            )
    print(f"\n{a.config or 'demo model (trained)'}; calibrated on {len(calib)}, checked on {len(check)} other images")
    print(
        "matmul peaks, GOP/s: onnxruntime "
        + ", ".join(f"{k} {v:.0f}" for k, v in pk.items())
        + "; torch "
        + ", ".join(f"{k} {v:.0f}" for k, v in tp.items())
    )
    print(
        "| precision | images/s b1 | images/s b8 | × fp32 (b8) | decisions unchanged | |Δscore| p99 / max "
        "| |Δmap| p99.9 / max |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r1, r8, agree, d in rows:
        print(
            f"| {name} | {r1:.1f} | {r8:.1f} | {r8 / rows[0][2]:.2f} | {100 * agree:.1f} % "
            f"| {d['score_q']:.4f} / {d['score_max']:.4f} | {d['map_q']:.3f} / {d['map_max']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
