"""Pseudo-mask job throughput and memory: images/s, peak RSS, and RSS after 20 vs after N images.

    .venv/bin/python bench/bench_pseudomask.py                         # SAM vit_b + GroundingDINO SwinT-OGC
    .venv/bin/python bench/bench_pseudomask.py --preset tiny --images 200

Runs the real job (``pseudomask.job.PseudoMaskJob``, the code ``dangerclip pseudomask`` runs) on CPU with
random weights over 512-px synthetic images (``training.synth``, all positive, so every image goes through
both models). A sampler thread reads VmRSS/VmHWM from /proc as the job's processed count passes each
checkpoint. Random-weight GroundingDINO scores queries arbitrarily (the full-size one finds no box above
0.35 on these images, which would skip SAM entirely), so the benchmark sets the box threshold to 0 and keeps
the ``--max-boxes`` best: every image then pays for SAM's image encoder and that many mask decodes, as a
trained model finding a few boxes would. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemorySampler(threading.Thread):
    """Records (VmRSS, VmHWM) in MiB when the job's processed count first reaches each checkpoint."""

    def __init__(self, job, checkpoints: list[int], period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.job, self.pending, self.period = job, sorted(checkpoints), period_s
        self.at: dict[int, dict[str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.pending:
            n = self.job.summary.processed + self.job.summary.failed
            while self.pending and n >= self.pending[0]:
                self.at[self.pending.pop(0)] = {
                    "rss_mib": round(proc_status_kib("VmRSS") / 1024, 1),
                    "peak_rss_mib": round(proc_status_kib("VmHWM") / 1024, 1),
                    "seconds": round(time.perf_counter() - self.t0, 2),
                }
            time.sleep(self.period)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset",
        choices=["full", "tiny"],
        default="full",
        help="full: SAM vit_b + GroundingDINO SwinT-OGC/BERT-base; tiny: the test configs",
    )
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[20], help="also sample RSS at these counts")
    ap.add_argument("--size", type=int, default=512, help="image side")
    ap.add_argument("--dino-size", type=int, default=800, help="GroundingDINO input (800 = upstream default)")
    ap.add_argument("--max-boxes", type=int, default=3, help="boxes per image sent to SAM")
    ap.add_argument("--box-threshold", type=float, default=0.0, help="0: every image has boxes (see above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--workdir", help="keep the generated images and outputs here (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pseudomask.job import JobConfig, PseudoMaskJob
    from training.synth import SynthConfig, generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pseudomask_"))
    data = work / "data"
    manifest = data / "manifest.jsonl"
    if not manifest.exists() or sum(1 for _ in open(manifest)) < args.images:
        generate(data, SynthConfig(n=args.images, size=args.size, positive_fraction=1.0, seed=7))
    out = work / f"out-{int(time.time())}"
    cfg = JobConfig(
        input=str(manifest),
        out=str(out),
        random_weights=True,
        sam_model="vit_b" if args.preset == "full" else "tiny",
        dino_config="swint-ogc" if args.preset == "full" else "tiny",
        dino_size=args.dino_size,
        max_boxes=args.max_boxes,
        box_threshold=args.box_threshold,
        batch_size=args.batch_size,
        device="cpu",
        threads=args.threads,
        limit=args.images,
        progress=False,
    )
    if args.preset == "tiny":
        from transformers import BertConfig

        from pseudomask.models import bundled_vocab

        bert = work / "bert-tiny"
        bert.mkdir(exist_ok=True)
        (bert / "vocab.txt").write_bytes(bundled_vocab().read_bytes())
        BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128).to_json_file(
            str(bert / "config.json")
        )
        cfg.bert_dir = str(bert)
    rss_start = proc_status_kib("VmRSS") / 1024
    job = PseudoMaskJob(cfg)
    t = time.perf_counter()
    job._ensure_models()  # built up front so images/s covers images only
    build_s = time.perf_counter() - t
    rss_models = proc_status_kib("VmRSS") / 1024
    sampler = MemorySampler(job, [c for c in args.checkpoints if c < args.images] + [args.images])
    sampler.t0 = time.perf_counter()
    sampler.start()
    summary = job.run()
    sampler.join(timeout=5)
    sampler.stop.set()

    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    stages = {}
    for k in ("decode", "detect", "segment", "write", "total"):
        v = sorted(r["timings_ms"][k] for r in recs if "timings_ms" in r)
        stages[k] = round(v[len(v) // 2], 1) if v else None
    boxes = sorted(len(r["prompts"]["weapon"]["boxes"]) for r in recs if "prompts" in r)
    report = {
        "preset": args.preset,
        "models": {"sam": cfg.sam_model, "dino": cfg.dino_config, "dino_size": cfg.dino_size},
        "box_threshold": cfg.box_threshold,
        "max_boxes": cfg.max_boxes,
        "images": summary.processed + summary.failed,
        "image_size": args.size,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "model_build_s": round(build_s, 1),
        "seconds": summary.seconds,
        "images_per_s": summary.images_per_s,
        "median_stage_ms": stages,
        "median_boxes_per_image": boxes[len(boxes) // 2] if boxes else 0,
        "rss_mib": {"start": round(rss_start, 1), "models_built": round(rss_models, 1)},
        "at": sampler.at,
        "final_peak_rss_mib": round(proc_status_kib("VmHWM") / 1024, 1),
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "summary": {"processed": summary.processed, "failed": summary.failed, "no_box": summary.no_box},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
