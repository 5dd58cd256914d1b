"""How the served model holds up across upload encodings (a quality check, not speed), in one run.

The demo's held-out synthetic test split is redrawn and each image is encoded the ways uploads arrive
(the encodings the committed samples rotate through: JPEG, greyscale PNG, RGBA PNG with an alpha fade,
palette PNG, WebP, and non-square canvases), decoded by the service's decoder and scored by onnxruntime
at the model card's threshold. Prints F1, recall and false-positive rate per encoding and the ratio of each
F1 to the JPEG one.

    .venv/bin/python bench/encodings.py                       # the committed demo model
    .venv/bin/python bench/encodings.py --model runs/x/model.onnx --n 6000 --seed 1000

Measured on the committed demo model (593 test images, F1 / recall / false-positive rate): JPEG 0.91 / 0.90 /
0.08; greyscale PNG 0.90 / 0.90 / 0.10; WebP 0.93, palette PNG 0.92, the non-square canvases 0.90; RGBA PNG with
the alpha fade 0.81 / 0.79 / 0.16, the worst (probably the white it is composited on, unlike anything in
training). The build before the ZegCLIP losses measured the same within 0.01. Before grey images entered
pre-training, greyscale F1 was 0.71 (0.50 with no grey views at all).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from dangerclip.runtime.preprocess import decode_image
from dangerclip.runtime.scorer import DangerScorer
from training.synth import SAMPLE_FORMATS, SynthConfig, encode_sample, jpeg_bytes, redraw_split

DEMO = Path(__file__).resolve().parents[1] / "dangerclip" / "assets" / "demo"


def encoded_test_split(n: int, seed: int, category: str, formats: list[tuple[str, str]]):
    """Yield ``(format name, decoded images, labels)`` for the test split of the synthetic set ``(n, seed)``."""
    samples = redraw_split(SynthConfig(n=n, seed=seed, categories=[category]), "test")
    labels = np.array([s.labels[category] for s in samples], bool)
    yield "jpeg (as trained)", [decode_image(jpeg_bytes(s.image)) for s in samples], labels
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, mode in formats:
            paths = [encode_sample(s.image, fmt, mode, Path(tmp) / f"{k}") for k, s in enumerate(samples)]
            yield f"{fmt} {mode}", [decode_image(p.read_bytes()) for p in paths], labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO / "model.onnx"))
    ap.add_argument("--n", type=int, default=None, help="synthetic set size (default: the demo report's)")
    ap.add_argument("--seed", type=int, default=None, help="synthetic set seed (default: the demo report's)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    report = json.loads((DEMO / "report.json").read_text())["config"]
    n = args.n or report["n_head"]
    seed = report["head_seed"] if args.seed is None else args.seed
    scorer = DangerScorer(args.model)
    cat = scorer.categories[0]
    formats = list(dict.fromkeys(m for m in SAMPLE_FORMATS if m != ("jpg", "RGB")))
    print(f"model {args.model} ({cat}, threshold {float(scorer.thresholds[0]):.3f}); synthetic set n={n} seed={seed}")
    print(f"{'encoding':18s} {'n':>5s} {'F1':>6s} {'recall':>7s} {'FP rate':>8s} {'F1 vs jpeg':>11s}")
    rows, base = [], None
    for name, images, y in encoded_test_split(n, seed, cat, formats):
        flagged = np.array([p.flagged[cat] for p in scorer.score_images(images, batch_size=16)])
        tp = int((flagged & y).sum())
        f1 = 2 * tp / max(1, int(flagged.sum()) + int(y.sum()))
        base = base or f1
        row = {
            "encoding": name,
            "n": len(y),
            "f1": f1,
            "recall": tp / max(1, int(y.sum())),
            "fp_rate": int((flagged & ~y).sum()) / max(1, int((~y).sum())),
            "f1_ratio": f1 / base,
        }
        rows.append(row)
        print(f"{name:18s} {row['n']:5d} {f1:6.3f} {row['recall']:7.3f} {row['fp_rate']:8.3f} {row['f1_ratio']:10.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
