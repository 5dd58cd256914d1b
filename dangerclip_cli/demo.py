"""``dangerclip demo``: stream the sample images through Kafka and a scoring worker, print what comes back.

Without ``--bootstrap-servers`` it starts an embedded tansu broker on 127.0.0.1 (memory only); with it, it
uses that cluster through exactly the same code (topics are created when missing). A worker runs in this
process with its ``/metrics`` server; the images go in as raw records, results and dead letters are read back
and printed as they arrive, then a summary, then everything shuts down.

With the identification assets (``dangerclip/assets/identify``, built by ``dangerclip demo-identify``) the
worker also runs the identification stage: the firearm-type head, and a catalogue index (one picture per firearm
model, PDQ and embeddings) built at start; flagged images print their type, the nearest catalogued model and
whether the very picture is known. The demo then streams the identification samples too.

The model is ``--model``, else the bundled demo model (``dangerclip/assets/demo/model.onnx``), else an
untrained tiny model built on the spot with the torch half (``pip install 'dangerclip[train]'``); the output
says loudly when scores come from an untrained model.
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
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dangerclip.runtime.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "dangerclip"
DEMO_MODEL = PACKAGE_ROOT / "assets" / "demo" / "model.onnx"
SAMPLES = PACKAGE_ROOT / "assets" / "samples"
IDENTIFY = PACKAGE_ROOT / "assets" / "identify"
RUN_HEADER = "demo-run"


def _say(msg: str = "") -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- model and images
def untrained_model_path() -> Path:
    """Build (once, cached) an untrained tiny DangerCLIP ONNX model with the torch half."""
    import hashlib

    from dangerclip import __version__

    # Keyed by the package version and the tiny config, so a changed model definition is rebuilt.
    config = PACKAGE_ROOT / "modeling" / "model_configs" / "tiny.json"
    tag = hashlib.sha256(__version__.encode() + (config.read_bytes() if config.is_file() else b"")).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dangerclip" / "demo"
    path = cache / f"tiny-untrained-{tag}.onnx"
    if path.is_file():
        return path
    try:
        from dangerclip.modeling.export import export_onnx  # torch: only this fallback needs it
        from dangerclip.modeling.factory import create_model
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"dangerclip demo: no demo model at {DEMO_MODEL} and cannot build one ({e.name} missing); "
            "pass --model PATH or pip install 'dangerclip[train]'"
        ) from None
    _say("building an untrained tiny model (one time, ~20 s) ...")
    cache.mkdir(parents=True, exist_ok=True)
    model = create_model("tiny", pretrained=None, seed=0).eval()
    return export_onnx(model, path)


def resolve_model(arg: str | None) -> Path:
    if arg:
        p = Path(arg)
        if not p.is_file():
            raise SystemExit(f"dangerclip demo: model not found: {p}")
        return p
    if DEMO_MODEL.is_file():
        return DEMO_MODEL
    return untrained_model_path()


def synthetic_images(folder: Path, n: int = 8, seed: int = 0) -> list[Path]:
    """Coloured scenes with a dark elongated shape (even) or a red disc (odd); JPEG and PNG."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(200, 480)), int(rng.integers(200, 480))
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(80, 255, size=3)))
        d = ImageDraw.Draw(im)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        if i % 2 == 0:
            d.rectangle([x0, y0, x0 + w // 3, y0 + h // 10], fill=(20, 20, 20))
            d.rectangle([x0, y0, x0 + w // 14, y0 + h // 4], fill=(30, 30, 30))
        else:
            d.ellipse([x0, y0, x0 + w // 4, y0 + w // 4], fill=(200, 40, 40))
        p = folder / f"synthetic_{i:02d}.{'jpg' if i % 3 else 'png'}"
        im.save(p)
        paths.append(p)
    return paths


def _held_out_quality(metrics: dict) -> str:
    """A one-line summary of the held-out figures training wrote into the card, or ``""``."""
    test = metrics.get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict):
        return ""
    parts = []
    for cat, m in test.items():
        if isinstance(m, dict) and "f1" in m:
            parts.append(
                f"{cat}: F1 {m['f1']:.2f}, AP {m.get('ap', float('nan')):.2f}, "
                f"threshold {m.get('threshold', float('nan')):.3f}"
            )
    return f"held-out test split (n={test.get('n', '?')}) " + "; ".join(parts) if parts else ""


def resolve_images(arg: str | None, tmp: Path) -> tuple[list[Path], str]:
    folder = Path(arg) if arg else SAMPLES
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files, str(folder)
        if arg:
            raise SystemExit(f"dangerclip demo: no images in {folder}")
    elif arg:
        raise SystemExit(f"dangerclip demo: not a folder: {folder}")
    return synthetic_images(tmp / "images"), "synthetic images (no sample folder found; use --images DIR)"


def identification_settings(tmp: Path) -> dict[str, Path]:
    """Settings of the identification stage from the bundled assets, the catalogue indexed now into ``tmp``
    ({} when the assets are absent; the type head alone when the index extra is not installed)."""
    if not (IDENTIFY / "type_head.onnx").is_file():
        return {}
    out = {"type_head_path": IDENTIFY / "type_head.onnx"}
    try:
        from dangerclip.runtime.embedder import Embedder
        from dangerclip.runtime.index import IndexWriter
        from dangerclip.runtime.index.store import embedder_identity, entry_for_image
        from dangerclip.runtime.preprocess import load_image

        emb = Embedder(IDENTIFY / "embedder.onnx")
        refs = sorted((IDENTIFY / "catalogue").glob("*.jpg"))
        imgs = [load_image(p) for p in refs]
        entries = [
            entry_for_image(im, id=p.stem, label=p.stem, source=f"catalogue/{p.name}")
            for p, im in zip(refs, imgs, strict=True)
        ]
        IndexWriter(tmp / "index").write(entries, emb.embed(imgs), embedder_identity(emb.card))
    except ImportError as e:
        _say(f"identification: type only; no catalogue matching without {e.name} (pip install 'dangerclip[index]')")
        return out
    return {**out, "index_path": tmp / "index", "embedder_path": IDENTIFY / "embedder.onnx"}


def describe_identification(ident: dict[str, Any]) -> str:
    """One line for a flagged result's ``identification``."""
    parts = []
    t = ident.get("type")
    if t:
        look = ", a look-alike" if t.get("look_alike") else ""
        parts.append(f"type {t['type']} {t['probability']:.2f} ({t['confidence']}{look})")
    by_embedding = [m for m in ident.get("matches", []) if m["signal"] == "embedding"]
    if by_embedding:
        m = by_embedding[0]
        same = {True: ", same model", False: ", another model", None: ""}[m.get("same_model")]
        parts.append(f"nearest catalogued {m['label'] or m['id']} (distance {m['distance']:.2f}{same})")
    pdq = [m for m in ident.get("matches", []) if m["signal"] == "pdq"]
    if ident.get("known_match") and pdq:
        parts.append(f"KNOWN picture: {pdq[0]['label'] or pdq[0]['id']} (PDQ distance {pdq[0]['distance']:.0f})")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- the demo
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers", default=None, help="use this Kafka cluster instead of the embedded broker"
    )
    parser.add_argument("--model", default=None, help="ONNX model (default: the bundled demo model)")
    parser.add_argument("--images", default=None, help="folder of images (default: the bundled samples)")
    parser.add_argument("--repeat", type=int, default=1, help="stream the images this many times")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of topics the demo creates")
    parser.add_argument("--input-topic", default="dangerclip.images")
    parser.add_argument("--output-topic", default="dangerclip.scores")
    parser.add_argument("--dead-letter-topic", default="dangerclip.dead-letter")
    parser.add_argument("--metrics-port", type=int, default=9108, help="0 picks a free port")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=120.0, help="give up waiting for results after this")
    parser.add_argument("--json", action="store_true", help="print each result as its full JSON document")
    parser.add_argument(
        "--identify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the identification stage with the bundled type head, embedder and catalogue (when present)",
    )
    parser.add_argument(
        "--linger", type=float, default=0.0, help="keep the worker and /metrics up this many seconds after the summary"
    )


def run(args: argparse.Namespace) -> int:
    # The demo's own output is the point; library chatter stays at warnings.
    for name in ("kafka", "service", "dangerclip"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dangerclip-demo-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> int:
    from dangerclip_cli.embedded import EmbeddedBroker, free_port
    from service.http import HealthServer
    from service.serve import build
    from service.settings import Settings
    from service.topics import ensure_topics

    model_path = resolve_model(args.model)
    images, source = resolve_images(args.images, tmp)
    identify = identification_settings(tmp) if args.identify else {}
    if identify and args.images is None and (IDENTIFY / "samples").is_dir():
        images += sorted((IDENTIFY / "samples").glob("*.jpg"))
        source += f" and {IDENTIFY / 'samples'}"
    broker = None
    if args.bootstrap_servers:
        bootstrap = args.bootstrap_servers
        _say(f"Kafka: {bootstrap}")
    else:
        broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
        bootstrap = broker.bootstrap_servers
        _say(f"Kafka: embedded tansu broker on {bootstrap} (memory only)")
    worker_thread = None
    server = None
    worker = None
    try:
        settings = Settings(
            _env_file=None,
            bootstrap_servers=bootstrap,
            input_topic=args.input_topic,
            output_topic=args.output_topic,
            dead_letter_topic=args.dead_letter_topic,
            group_id=f"dangerclip-demo-{uuid.uuid4().hex[:8]}",
            model_path=model_path,
            max_batch_size=args.max_batch_size,
            metrics_port=args.metrics_port if args.metrics_port else free_port(),
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            **identify,
        )
        security = settings.kafka_security()
        ensure_topics(
            bootstrap,
            {
                settings.input_topic: args.partitions,
                settings.output_topic: args.partitions,
                settings.dead_letter_topic: 1,
            },
            **security,
        )
        _start_group_at_end(settings, security)
        worker, metrics = build(settings)
        card = worker.handler.scorer.card
        _say(
            f"model: {model_path} ({card.name} {card.version}, {card.mode} head, categories {card.prompts}, "
            f"{'trained' if card.trained else 'UNTRAINED'})"
        )
        quality = _held_out_quality(card.metrics)
        if quality:
            _say(f"model quality (from its card): {quality}")
        if card.notes:
            _say(f"model notes: {card.notes}")
        ident = worker.handler.identifier
        if ident is not None:
            what = []
            if ident.type_head is not None:
                c = ident.type_head.card
                acc = c.metrics.get("test_accuracy", 0.0)
                what.append(f"type head {c.name} ({len(c.classes)} types, test accuracy {acc:.2f})")
            if ident.matcher is not None:
                st = ident.matcher.reader.stats()
                what.append(f"catalogue index of {st['entries']} firearm models ({' + '.join(st['signals'])})")
            _say(f"identification of flagged images: {', '.join(what)}")
        if not card.trained:
            _say("")
            _say("  !! THIS MODEL IS UNTRAINED: its scores are random and mean nothing. !!")
            _say("  !! Train one (dangerclip train) or pass --model for real results.    !!")
            _say("")
        server = HealthServer(metrics.registry, "127.0.0.1", settings.metrics_port, worker.alive, worker.ready).start()
        metrics_url = f"http://127.0.0.1:{server.port}/metrics"
        worker_thread = threading.Thread(target=worker.run, name="dangerclip-worker", daemon=True)
        worker_thread.start()
        _say(f"worker: consuming {settings.input_topic}, metrics at {metrics_url}")
        if not _wait(lambda: worker.ready()[0], 60):
            _say("the worker got no partitions within 60 s; giving up")
            return 1
        rc = _stream(args, settings, security, images, source, metrics_url)
        if args.linger > 0:
            _say(f"keeping the worker and {metrics_url} up for {args.linger:.0f} s (Ctrl-C to stop)")
            time.sleep(args.linger)
        return rc
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        if worker is not None:
            worker.stop()
        if worker_thread is not None:
            worker_thread.join(timeout=30)
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        _say("shut down cleanly")


def _start_group_at_end(settings: Any, security: dict[str, Any]) -> None:
    """Commit the input topic's end offsets for the demo's fresh group, so the worker scores only what the
    demo sends (not a real cluster's backlog) and misses none of it."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list, group_id=settings.group_id, enable_auto_commit=False, **security
    )
    try:
        tps = [TopicPartition(settings.input_topic, p) for p in sorted(c.partitions_for_topic(settings.input_topic))]
        c.assign(tps)
        end = c.end_offsets(tps)
        c.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in tps})
    finally:
        c.close(autocommit=False)


def _wait(pred: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _stream(
    args: argparse.Namespace, settings: Any, security: dict[str, Any], images: list[Path], source: str, metrics_url: str
) -> int:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    run_id = uuid.uuid4().hex[:12].encode()
    reader = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list, group_id=None, enable_auto_commit=False, **security
    )
    tps = [
        TopicPartition(t, p)
        for t in (settings.output_topic, settings.dead_letter_topic)
        for p in sorted(reader.partitions_for_topic(t) or [0])
    ]
    reader.assign(tps)
    reader.seek_to_end(*tps)
    for tp in tps:
        reader.position(tp)  # resolve "end" now, before anything is produced
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_list,
        acks="all",
        linger_ms=5,
        max_request_size=settings.max_bytes + 1024,
        **security,
    )
    sent_at: dict[str, float] = {}
    payloads = [(p.name, p.read_bytes()) for p in images]
    _say(f"streaming {len(payloads) * args.repeat} images from {source} to {settings.input_topic}")
    _say("")
    t_start = time.perf_counter()
    for r in range(args.repeat):
        for name, data in payloads:
            key = name if args.repeat == 1 else f"{name}#{r}"
            sent_at[key] = time.perf_counter()
            producer.send(settings.input_topic, key=key.encode(), value=data, headers=[(RUN_HEADER, run_id)])
    producer.flush(30)
    producer.close(5)

    latencies, flagged, dead, identified = [], 0, 0, 0
    deadline = time.monotonic() + args.timeout
    seen: set[str] = set()
    try:
        while len(seen) < len(sent_at) and time.monotonic() < deadline:
            for _, recs in reader.poll(timeout_ms=200).items():
                for rec in recs:
                    if (RUN_HEADER, run_id) not in (rec.headers or []):
                        continue
                    key = rec.key.decode() if rec.key else "?"
                    if key in seen:
                        continue  # a redelivery after a hiccup: same id, already shown
                    seen.add(key)
                    lat = time.perf_counter() - sent_at.get(key, t_start)
                    latencies.append(lat)
                    doc = json.loads(rec.value)
                    if args.json:
                        _say(json.dumps(doc))
                    elif rec.topic == settings.dead_letter_topic:
                        dead += 1
                        _say(f"  DEAD-LETTER {key:<28} {doc['reason']}: {doc['message'][:60]}")
                    else:
                        hit = [c for c, f in doc["flagged"].items() if f]
                        flagged += bool(hit)
                        scores = "  ".join(f"{c}={s:.3f}" for c, s in doc["scores"].items())
                        peak = ""
                        if doc.get("danger_map"):
                            first = next(iter(doc["danger_map"]["summary"].values()))
                            peak = f"  peak@{first['peak_at']}"
                        mark = "FLAGGED" if hit else "ok     "
                        _say(f"  {mark} {key:<28} {scores}{peak}  ({lat * 1000:.0f} ms)")
                        if doc.get("identification"):
                            identified += 1
                            _say(f"          {describe_identification(doc['identification'])}")
    finally:
        reader.close()
    elapsed = time.perf_counter() - t_start
    n = len(seen)
    _say("")
    _say(
        f"summary: {n}/{len(sent_at)} images scored in {elapsed:.2f} s ({n / elapsed:.1f} images/s), "
        f"{flagged} flagged ({identified} identified), {dead} dead-lettered"
    )
    if latencies:
        p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
        _say(f"end-to-end latency (send → result read): p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    _say(f"Prometheus metrics: {metrics_url}  (the worker's counters, latencies, lag, model info)")
    return 0 if n == len(sent_at) else 1
