"""Benchmark: the whole Kafka pipeline against the bare ``DangerScorer`` on the same images, in one run.

    python bench/bench_pipeline.py --config tiny
    python bench/bench_pipeline.py --config ViT-B-16 --images 256
    python bench/bench_pipeline.py --model path/to/model.onnx

1. **bare**: decode + preprocess + ``DangerScorer.predict`` in batches of ``--batch-size``, one thread after
   the other, in this process (what a hand-written script would do);
2. **pipeline throughput**: the same images pre-loaded on a 4-partition topic of an embedded tansu broker,
   then one worker (``python -m service.worker``, a separate process) started with the same batch size and
   onnxruntime threads; images/s from its first to its last result;
3. **pipeline latency**: images sent at a fixed rate (``--latency-load`` × the measured throughput); p50/p99
   from the record's timestamp to the result arriving at a consumer;
4. **where the time goes**: decode, inference, produce+flush and commit seconds per image, from the worker's
   own Prometheus histograms scraped over HTTP; worker RSS sampled from /proc through the run.

``--config`` builds a model with random weights via the torch half (``dangerclip[train]``); the worker and the
bare scorer need only onnxruntime. Prints a table and writes it as JSON with ``--json-out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dangerclip.runtime.preprocess import decode_image, preprocess_batch  # noqa: E402
from dangerclip.runtime.scorer import DangerScorer  # noqa: E402
from dangerclip_cli.embedded import EmbeddedBroker, free_port  # noqa: E402
from service.topics import ensure_topics  # noqa: E402


def export_random_model(config: str, out: Path) -> Path:
    """Export ``config`` with random weights, in a subprocess so torch never loads in this process."""
    code = (
        "import sys, torch; torch.set_num_threads(2)\n"
        "from dangerclip.modeling.factory import create_model\n"
        "from dangerclip.modeling.export import export_onnx\n"
        f"m = create_model({config!r}, pretrained='random', seed=0).eval()\n"
        f"export_onnx(m, {str(out)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return out


def make_images(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs of ``size``: smooth colour fields with shapes (photo-like compression cost)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    w, h = size
    for i in range(n):
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        d = ImageDraw.Draw(im)
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 30))
        d.rectangle([x, y, x + 60, y + 12], fill=(20, 20, 20)) if i % 2 else d.ellipse(
            [x, y, x + 40, y + 40], fill=(200, 30, 30)
        )
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def bench_bare(model: Path, images: list[bytes], batch: int, threads: int | None) -> dict[str, float]:
    scorer = DangerScorer(model, providers="cpu", intra_op_threads=threads)
    cfg = scorer.card.preprocess
    warm = preprocess_batch([decode_image(b) for b in images[:batch]], cfg)
    scorer.predict(warm)
    t_decode = t_infer = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        a = time.perf_counter()
        x = preprocess_batch([decode_image(b) for b in images[i : i + batch]], cfg)
        b = time.perf_counter()
        scorer.predict(x)
        t_decode += b - a
        t_infer += time.perf_counter() - b
    total = time.perf_counter() - t0
    n = len(images)
    return {
        "images_per_s": n / total,
        "decode_ms_per_image": 1000 * t_decode / n,
        "inference_ms_per_image": 1000 * t_infer / n,
        "inference_only_images_per_s": n / t_infer,
    }


class RssSampler:
    """Samples a process's resident set size from /proc every ``every_s``."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s, self.samples = pid, every_s, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append(int(line.split()[1]) / 1024)
            except OSError:
                return
            self._stop.wait(self.every_s)

    def stop(self) -> list[float]:
        self._stop.set()
        self._t.join(2)
        return self.samples


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class ResultReader:
    """Reads ``topic`` from the start in a thread, recording ``key -> (arrival time.time(), record ts ms)``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.arrivals: dict[str, tuple[float, int]] = {}
        self._c = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _, recs in self._c.poll(timeout_ms=50).items():
                now = time.time()
                for r in recs:
                    self.arrivals.setdefault(r.key.decode(), (now, json.loads(r.value)["source"]["timestamp_ms"]))
        self._c.close()

    def wait(self, prefix: str, n: int, timeout_s: float) -> list[tuple[float, int]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [v for k, v in list(self.arrivals.items()) if k.startswith(prefix)]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return [v for k, v in list(self.arrivals.items()) if k.startswith(prefix)]

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def bench_pipeline(model: Path, images: list[bytes], args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    from kafka import KafkaProducer

    with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
        bs = broker.bootstrap_servers
        topics = {"in": "bench.images", "out": "bench.scores", "dlq": "bench.dead-letter"}
        ensure_topics(bs, {topics["in"]: 4, topics["out"]: 4, topics["dlq"]: 1})
        producer = KafkaProducer(
            bootstrap_servers=bs, acks="all", linger_ms=5, batch_size=1 << 20, max_request_size=8 << 20
        )
        for i, data in enumerate(images):
            producer.send(topics["in"], key=f"b-{i}".encode(), value=data)
        producer.flush(60)
        port = free_port()
        env = dict(
            os.environ,
            DANGERCLIP_BOOTSTRAP_SERVERS=bs,
            DANGERCLIP_INPUT_TOPIC=topics["in"],
            DANGERCLIP_OUTPUT_TOPIC=topics["out"],
            DANGERCLIP_DEAD_LETTER_TOPIC=topics["dlq"],
            DANGERCLIP_MODEL_PATH=str(model),
            DANGERCLIP_METRICS_PORT=str(port),
            DANGERCLIP_MAX_BATCH_SIZE=str(args.batch_size),
            DANGERCLIP_PROVIDERS="cpu",
            DANGERCLIP_DECODE_WORKERS=str(args.decode_workers),
            DANGERCLIP_SESSION_TIMEOUT_MS="10000",
        )
        if args.threads:
            env["DANGERCLIP_INTRA_OP_THREADS"] = str(args.threads)
        with open(tmp / "worker.log", "wb") as wlog:
            worker = subprocess.Popen(
                [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, stdout=wlog, stderr=subprocess.STDOUT
            )
        rss = RssSampler(worker.pid)
        reader = ResultReader(bs, topics["out"])
        try:
            got = reader.wait("b-", len(images), args.timeout)
            if len(got) < len(images):
                raise SystemExit(f"pipeline produced {len(got)}/{len(images)} results; see {tmp / 'worker.log'}")
            arrivals = sorted(t for t, _ in got)
            # steady state: from the first batch's arrival to the last (the first batch pays the warm-up)
            first_batch = min(args.batch_size, len(arrivals) - 1)
            thr = (len(arrivals) - first_batch) / (arrivals[-1] - arrivals[first_batch - 1])
            m_backlog = scrape(port)
            # latency at a fixed rate below capacity
            rate = max(0.05, thr * args.latency_load)
            n_lat = min(len(images), max(20, int(rate * args.latency_seconds)))
            t0 = time.time()
            for i in range(n_lat):
                target = t0 + i / rate
                time.sleep(max(0.0, target - time.time()))
                producer.send(topics["in"], key=f"l-{i}".encode(), value=images[i])
                producer.flush(10)
            got = reader.wait("l-", n_lat, args.timeout)
            lat = [1000 * (t - ts / 1000) for t, ts in got]
        finally:
            reader.stop()
            samples = rss.stop()
            worker.terminate()
            worker.wait(60)
            producer.close(5)

    def per_image_ms(name: str, metrics: dict[str, float]) -> float:
        return (
            1000
            * metrics.get(f"{name}_sum", 0.0)
            / max(1.0, metrics['dangerclip_records_consumed_total{topic="bench.images"}'])
        )

    n = len(images)
    p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"), float("nan"))
    return {
        "images_per_s": thr,
        "latency_rate_per_s": rate,
        "latency_records": len(lat),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "where_ms_per_image": {
            "decode+preprocess (pool, overlapped)": per_image_ms("dangerclip_decode_duration_seconds", m_backlog),
            "inference": per_image_ms("dangerclip_inference_duration_seconds", m_backlog),
            "kafka produce+flush": per_image_ms("dangerclip_produce_duration_seconds", m_backlog),
            "kafka commit": per_image_ms("dangerclip_commit_duration_seconds", m_backlog),
            "wall (1000 / images_per_s)": 1000 / thr,
        },
        "mean_batch": m_backlog["dangerclip_batch_size_records_sum"]
        / max(1.0, m_backlog["dangerclip_batch_size_records_count"]),
        "records": n,
        "rss_mb": {
            "first": samples[0] if samples else None,
            "peak": max(samples) if samples else None,
            "last": samples[-1] if samples else None,
            "after_warmup": samples[min(len(samples) - 1, 10)] if samples else None,
            # a leak shows as growth between 20 % of the run and its end; warm-up does not
            "at_20pct": samples[len(samples) // 5] if samples else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", default="tiny", help="build this config with random weights (tiny, ViT-B-16)")
    g.add_argument("--model", type=Path, help="an exported .onnx model instead")
    p.add_argument("--images", type=int, default=512, help="distinct images (records)")
    p.add_argument("--image-size", default="480x360", help="WxH of the generated JPEGs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (both sides)")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--latency-load", type=float, default=0.5, help="latency phase rate, × throughput")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--skip-bare", action="store_true", help="pipeline only (long RSS runs)")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="dangerclip-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model = args.model or export_random_model(args.config, tmp / f"{args.config}.onnx")
        name = args.model.name if args.model else f"{args.config} (random weights)"
        images = make_images(args.images, (w, h))
        print(
            f"model {name}, {len(images)} JPEGs {w}x{h} (mean {np.mean([len(b) for b in images]) / 1024:.0f} KiB), "
            f"batch {args.batch_size}, ort threads {args.threads or 'default'}, {os.cpu_count()} CPUs",
            flush=True,
        )
        if args.skip_bare:
            bare = {
                "images_per_s": float("nan"),
                "decode_ms_per_image": float("nan"),
                "inference_ms_per_image": float("nan"),
                "inference_only_images_per_s": float("nan"),
            }
        else:
            bare = bench_bare(model, images, args.batch_size, args.threads)
        print(f"bare scorer: {bare['images_per_s']:.1f} images/s", flush=True)
        pipe = bench_pipeline(model, images, args, tmp)
    ratio = pipe["images_per_s"] / bare["images_per_s"]
    report = {"model": name, "bare": bare, "pipeline": pipe, "ratio": ratio, "batch_size": args.batch_size}
    print(f"pipeline:    {pipe['images_per_s']:.1f} images/s   ratio pipeline/bare = {ratio:.3f}")
    print(
        f"bare: decode {bare['decode_ms_per_image']:.2f} ms/img, inference {bare['inference_ms_per_image']:.2f} "
        f"ms/img (inference alone {bare['inference_only_images_per_s']:.1f} images/s)"
    )
    print(
        f"pipeline end-to-end latency at {pipe['latency_rate_per_s']:.1f} images/s "
        f"({pipe['latency_records']} records): p50 {pipe['p50_ms']:.0f} ms, p99 {pipe['p99_ms']:.0f} ms"
    )
    print(f"pipeline mean batch {pipe['mean_batch']:.1f}; time per image:")
    for k, v in pipe["where_ms_per_image"].items():
        print(f"  {k:<40} {v:8.2f} ms")
    r = pipe["rss_mb"]
    print(
        f"worker RSS MB: first {r['first']:.0f}, after warm-up {r['after_warmup']:.0f}, "
        f"at 20% of the run {r['at_20pct']:.0f}, peak {r['peak']:.0f}, last {r['last']:.0f}"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
