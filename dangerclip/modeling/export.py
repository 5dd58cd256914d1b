"""ONNX export: one graph from preprocessed images to scores and danger maps, checked against torch.

The graph's input is ``images [B, 3, S, S]`` (dynamic batch); its outputs ``scores [B, k]`` and
``maps [B, k, h, w]``. The model card goes into the ONNX metadata, so ``DangerScorer`` needs only the file.
The exporter runs the written graph in onnxruntime and refuses to leave a file whose scores *or maps* differ
from the reference by more than the precision's tolerance (:data:`TOLERANCES`): torch for fp32, the fp32 export
for the fp16 and INT8 copies, on the calibration images given. The tolerance and the deviation measured are
written into the file (``dangerclip.export_check``), so a served model says how close it is to the one trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dangerclip.modeling.model import DangerCLIP
from dangerclip.runtime.card import CARD_KEY
from dangerclip.runtime.scorer import INPUT_NAME, OUTPUT_NAMES

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"score": FP32_TOLERANCE, "map": FP32_TOLERANCE},
    "fp16": {"score": 0.01, "map": 0.05},
    "int8": {"score": 0.05, "map": 0.10},
}
"""Largest accepted ``|Δ|`` of scores and of map cells, per precision. The fp32 export is held to torch by the
maximum. A converted copy (fp16, INT8) is held to the fp32 export by the 99th percentile of its scores' ``|Δ|``
and the 99.9th percentile of its map cells' (:data:`COPY_QUANTILES`), the maxima recorded beside them: a maximum
over the calibration set grows with the set, so a gate on it refused more the more images it was given (on 500
held-out images the demo model's dynamic INT8 copy had a largest map cell off by 0.134 and a 99.9th percentile of
0.053, with no decision changed). Measured on the demo model over 500 held-out images: INT8 (dynamic) score
0.049 max / map 0.053 at the 99.9th percentile."""

MIN_STATIC_HALF = 8
"""``dangerclip export --int8-static`` calibrates on half its images and checks on the other half: at least this
many each."""

COPY_QUANTILES = {"score": 0.99, "map": 0.999}
"""The quantile of ``|Δ|`` each converted copy's gate reads (see :data:`TOLERANCES`)."""


CHECK_KEY = "dangerclip.export_check"


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


class _Graph(nn.Module):
    def __init__(self, model: DangerCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.scores, out.maps


def _write_metadata(path: Path, model: DangerCLIP, extra: dict[str, str] | None = None) -> None:
    import onnx

    m = onnx.load(str(path))
    props = {
        CARD_KEY: model.card.to_json(),
        "dangerclip.version": model.card.version,
        "dangerclip.categories": json.dumps(model.card.prompts),
        **(extra or {}),
    }
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = "dangerclip"
    m.doc_string = f"DangerCLIP {model.card.name} {model.card.version} ({model.card.mode})"
    onnx.save(m, str(path))


def _ort_scores(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s, m = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.astype(np.float32)})
    return s, m


def check_images(model: DangerCLIP, n: int = 4, seed: int = 0) -> np.ndarray:
    """Synthetic check inputs: smooth random images through the real preprocessing, ``[n, 3, S, S]``."""
    from PIL import Image

    from dangerclip.runtime.preprocess import preprocess_batch

    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        imgs.append(Image.fromarray(small).resize((300, 260), Image.Resampling.BICUBIC))
    return preprocess_batch(imgs, model.card.preprocess)


def export_onnx(
    model: DangerCLIP,
    path: str | Path,
    *,
    check: bool = True,
    check_batch: np.ndarray | None = None,
    tol: float = FP32_TOLERANCE,
    opset: int = 17,
) -> Path:
    """Export ``model`` to an fp32 ONNX file and verify it against torch.

    Args:
        model: the DangerCLIP model (any mode).
        path: output ``.onnx`` path; written only if the check passes.
        check: compare onnxruntime with torch on ``check_batch`` (default: synthetic images).
        check_batch: ``[B, 3, S, S]`` preprocessed images for the check.
        tol: largest accepted ``max |Δscore|``.

    Raises:
        ExportError: the graph's scores differ from torch's by more than ``tol``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.onnx")
    model = model.eval()
    s = model.card.preprocess.image_size
    dummy = torch.zeros(2, 3, s, s)
    # open_clip's fused attention fast path does not trace; our backbone code avoids it, but be safe.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(
                _Graph(model),
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    try:
        _write_metadata(tmp, model, {"dangerclip.precision": "fp32"})
        if check:
            batch = check_images(model) if check_batch is None else check_batch
            dev = max_score_deviation(model, tmp, batch)
            log.info("export check: max |Δscore| = %.2e, max |Δmap| = %.2e", dev["score"], dev["map"])
            limit = {"score": tol, "map": max(tol, TOLERANCES["fp32"]["map"])}
            _gate(dev, limit, "fp32", path)
            _record_check(tmp, "fp32", limit, dev)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_checked(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    input_name: str,
    output_name: str,
    metadata: dict[str, str],
    atol: float = 1e-4,
    what: str = "model",
    opset: int = 17,
) -> float:
    """Export a one-input, one-output ``module`` (dynamic batch) with ``metadata`` in the file, and write it only
    if onnxruntime gives torch's output on ``example`` within ``atol``: the gate every exported head passes (the
    type head, the retrieval embedder). Returns the largest deviation.

    Raises:
        ExportError: the exported graph disagrees with torch (nothing is written).
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.onnx")
    module = module.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
            want = module(example).numpy()
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run([output_name], {input_name: example.numpy()})[0]
        err = float(np.abs(got - want).max())
        if err > atol:
            raise ExportError(f"exported {what} differs from torch by {err:.2e} (> {atol}); not writing {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return err


def _gate(
    dev: dict[str, float], limit: dict[str, float], precision: str, path: Path | str, quantiles: dict | None = None
) -> None:
    def what(k: str) -> str:
        return f"{k} |Δ| {'max' if quantiles is None else f'at the {100 * quantiles[k]:g}th percentile'}"

    over = [f"{what(k)} {dev[k]:.3g} > {limit[k]:g}" for k in ("score", "map") if dev[k] > limit[k]]
    if over:
        raise ExportError(f"{precision} export of {path} is off its reference: {', '.join(over)}; not writing it")


def _record_check(path: Path | str, precision: str, limit: dict[str, float], dev: dict[str, Any]) -> None:
    import onnx

    m = onnx.load(str(path))
    rounded = {k: round(v, 8) if isinstance(v, float) else v for k, v in dev.items()}
    check = {"precision": precision, "tolerance": limit, "deviation": rounded}
    onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, CHECK_KEY: json.dumps(check)})
    onnx.save(m, str(path))


def finish_copy(
    fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, precision: str, label: str | None = None
) -> dict[str, float]:
    """Stamp a converted copy of an fp32 export with its precision (``label``, default ``precision``), measure it
    against the fp32 export on ``calib``, and keep it only within ``TOLERANCES[precision]`` (the check recorded in
    the file). Every converted copy (fp16, dynamic and static INT8) ends here.

    Raises:
        ExportError: over the tolerance (the copy is removed).
    """
    import onnx

    m = onnx.load(str(out_path))
    _set_precision(m, label or precision)
    onnx.save(m, str(out_path))
    dev = onnx_deviation(fp32_path, out_path, calib)
    gated = {"score": dev["score_q"], "map": dev["map_q"]}
    try:
        _gate(gated, TOLERANCES[precision], precision, out_path, COPY_QUANTILES)
    except ExportError:
        Path(out_path).unlink(missing_ok=True)
        raise
    record = {
        **gated,
        "quantiles": COPY_QUANTILES,
        "score_max": dev["score_max"],
        "map_max": dev["map_max"],
        "decisions_unchanged": dev["decisions_unchanged"],
        "images": len(calib),
    }
    _record_check(out_path, precision, TOLERANCES[precision], record)
    return dev


def max_score_deviation(model: DangerCLIP, onnx_path: str | Path, batch: np.ndarray) -> dict[str, float]:
    """``max |Δ|`` of scores and maps between torch and an ONNX file on ``batch``."""
    with torch.no_grad():
        ref = model(torch.from_numpy(batch))
    s, m = _ort_scores(Path(onnx_path), batch)
    return {
        "score": float(np.abs(s - ref.scores.numpy()).max()),
        "map": float(np.abs(m - ref.maps.numpy()).max()),
    }


def onnx_deviation(ref_path: str | Path, other_path: str | Path, batch: np.ndarray) -> dict[str, float]:
    """How far ``other_path`` is from ``ref_path`` on ``batch``: ``max``, mean and the gate's quantile
    (:data:`COPY_QUANTILES`, keys ``score_q`` / ``map_q``) of ``|Δ|`` over scores and over map cells, and the share
    of decisions (each image and category at the reference card's thresholds) that stay the same."""
    from dangerclip.runtime.card import ModelCard
    from dangerclip.runtime.onnxmeta import read_metadata

    s0, m0 = _ort_scores(Path(ref_path), batch)
    s1, m1 = _ort_scores(Path(other_path), batch)
    ds, dm = np.abs(s1 - s0), np.abs(m1 - m0)
    card = read_metadata(Path(ref_path)).get(CARD_KEY)
    cut = np.asarray(ModelCard.from_json(card).threshold_vector() if card else [0.5] * s0.shape[1], np.float32)
    return {
        "score_max": float(ds.max()),
        "score_mean": float(ds.mean()),
        "score_q": float(np.quantile(ds, COPY_QUANTILES["score"])),
        "map_max": float(dm.max()),
        "map_q": float(np.quantile(dm, COPY_QUANTILES["map"])),
        "decisions_unchanged": float(((s1 >= cut) == (s0 >= cut)).mean()),
    }


def export_fp16(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray) -> dict[str, float]:
    """An fp16 copy of an fp32 export (inputs and outputs stay fp32); returns its deviation on ``calib``.

    Raises:
        ExportError: scores or maps off the fp32 export by more than ``TOLERANCES["fp16"]`` (no file left).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(fp32_path))
    onnx.save(convert_float_to_float16(m, keep_io_types=True), str(out_path))
    return finish_copy(fp32_path, out_path, calib, "fp16")


def export_int8(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray) -> dict[str, float]:
    """A dynamically quantised INT8 copy (weights int8, activations quantised at run time).

    Dynamic quantisation needs no calibration statistics; ``calib`` measures the deviation it causes.

    Raises:
        ExportError: scores or maps off the fp32 export by more than ``TOLERANCES["int8"]`` (no file left).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return finish_copy(fp32_path, out_path, calib, "int8")


def _set_precision(m: object, precision: str) -> None:
    props = m.metadata_props  # type: ignore[attr-defined]
    for p in props:
        if p.key == "dangerclip.precision":
            p.value = precision
            return
    props.add(key="dangerclip.precision", value=precision)


def load_calibration(paths: list[str], model: DangerCLIP) -> np.ndarray:
    from dangerclip.runtime.preprocess import load_image, preprocess_batch

    files: list[Path] = []
    for p in paths:
        pp = Path(p)
        files += sorted(q for q in pp.iterdir() if q.is_file()) if pp.is_dir() else [pp]
    imgs = []
    for f in files:
        try:
            imgs.append(load_image(f))
        except (OSError, ValueError) as e:
            log.warning("skipping calibration file %s: %s", f, e)
    if not imgs:
        raise ValueError(f"no readable calibration images in {paths}")
    return preprocess_batch(imgs, model.card.preprocess)


# `dangerclip export`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="DangerCLIP checkpoint (.safetensors)")
    parser.add_argument("--config", default=None, help="export a fresh model of this config instead of a checkpoint")
    parser.add_argument("--mode", default="trained", choices=["trained", "zeroshot"], help="with --config")
    parser.add_argument("--pretrained", default=None, help="CLIP weights (tag or file), if not in the checkpoint")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--fp16", action="store_true", help="also write <out>.fp16.onnx")
    parser.add_argument("--int8", action="store_true", help="also write <out>.int8.onnx (dynamic quantisation)")
    parser.add_argument(
        "--int8-static",
        action="store_true",
        help="also write <out>.int8-static.onnx: static QDQ, per-channel weights, attention products in fp32, "
        "calibrated on half the --calibration images and checked on the other half (at least "
        f"{2 * MIN_STATIC_HALF}; faster than --int8 on CPUs with VNNI: bench/quantize.py)",
    )
    parser.add_argument("--calibration", nargs="*", default=[], help="images or folders to measure deviation on")


def run(args: argparse.Namespace) -> int:
    from dangerclip.modeling.checkpoint import load_checkpoint
    from dangerclip.modeling.factory import create_model

    if bool(args.checkpoint) == bool(args.config):
        raise SystemExit("dangerclip export: give a checkpoint or --config, not both")
    if args.int8_static and not args.calibration:
        raise SystemExit(
            "dangerclip export: --int8-static needs --calibration images like the ones it will score "
            f"(at least {2 * MIN_STATIC_HALF}: half fix the ranges, half check them)"
        )
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, pretrained=args.pretrained)
    else:
        model = create_model(
            args.config,
            args.pretrained,
            mode=args.mode,
            version="0.0.0-zeroshot" if args.mode == "zeroshot" else "0.0.0-untrained",
        )
        if args.mode == "trained":
            model.card.notes = "UNTRAINED head (random weights)"
    out = Path(args.out)
    calib = load_calibration(args.calibration, model) if args.calibration else check_images(model, n=8)
    if args.int8_static and len(calib) < 2 * MIN_STATIC_HALF:  # before any export is written
        raise SystemExit(
            f"dangerclip export: --int8-static needs at least {2 * MIN_STATIC_HALF} readable calibration images "
            f"(got {len(calib)})"
        )
    export_onnx(model, out, check_batch=calib)
    report: dict[str, object] = {
        "onnx": str(out),
        "version": model.card.version,
        "fp32_vs_torch": max_score_deviation(model, out, calib),
    }
    stem = out.with_suffix("")
    if args.fp16:
        report["fp16"] = {"path": f"{stem}.fp16.onnx", **export_fp16(out, f"{stem}.fp16.onnx", calib)}
    if args.int8:
        report["int8"] = {"path": f"{stem}.int8.onnx", **export_int8(out, f"{stem}.int8.onnx", calib)}
    if args.int8_static:
        from dangerclip.modeling.quantize import quantize_static_qdq

        path = f"{stem}.int8-static.onnx"
        report["int8_static"] = {
            "path": path,
            **quantize_static_qdq(out, path, calib[::2], calib[1::2], attention=False),
        }
    print(json.dumps(report))
    return 0
