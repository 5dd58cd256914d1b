"""``dangerclip score IMAGE...``: one JSON line per image, optional heatmap overlays.

Serving half only (numpy, Pillow, onnxruntime). A file that cannot be read gets a JSON line with an
``error`` and its reason code; the rest are still scored. Exit status 1 when any file failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from dangerclip.runtime.filekind import expect
from dangerclip.runtime.preprocess import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, load_image

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--model", required=True, help="DangerCLIP .onnx file")
    parser.add_argument("--providers", default="auto", help="auto | cpu | cuda | tensorrt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--heatmaps", default=None, help="write <name>.<category>.png overlays to this folder")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="CATEGORY=VALUE",
        help="override a category's threshold (repeatable)",
    )


def _expand(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def _thresholds(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep:
            raise SystemExit(f"--threshold wants CATEGORY=VALUE, got {it!r}")
        out[name] = float(value)
    return out


def run(args: argparse.Namespace) -> int:
    from dangerclip.runtime.scorer import DangerScorer

    expect(args.model, "onnx", what="--model")
    scorer = DangerScorer(args.model, providers=args.providers, thresholds=_thresholds(args.threshold))
    if not scorer.card.trained and scorer.card.mode == "trained":
        log.warning("model %s has an UNTRAINED head: its scores mean nothing", args.model)
    files = _expand(args.images)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for i in range(0, len(files), args.batch_size):
        chunk = files[i : i + args.batch_size]
        ok, images = [], []
        for f in chunk:
            try:
                images.append(load_image(f, max_pixels=args.max_pixels))
                ok.append(f)
            except ImageError as e:
                failed += 1
                print(json.dumps({"path": str(f), "error": str(e), "reason": e.reason}), flush=True)
            except OSError as e:
                failed += 1
                print(json.dumps({"path": str(f), "error": str(e), "reason": "unreadable"}), flush=True)
        if not images:
            continue
        for f, img, pred in zip(ok, images, scorer.score_images(images, args.batch_size), strict=True):
            rec: dict[str, Any] = {
                "path": str(f),
                "model_version": scorer.version,
                "scores": pred.scores,
                "flagged": pred.flagged,
                "map": pred.map_summary(),
            }
            if heat_dir:
                from dangerclip.runtime.heatmap import overlay

                rec["heatmaps"] = {}
                for j, c in enumerate(scorer.categories):
                    out = heat_dir / f"{f.stem}.{c}.png"
                    overlay(img, pred.map[j], scorer.card.preprocess).save(out)
                    rec["heatmaps"][c] = str(out)
            print(json.dumps(rec), flush=True)
    if failed:
        print(f"dangerclip score: {failed} of {len(files)} file(s) could not be scored", file=sys.stderr)
    return 1 if failed else 0
