"""What the service, deploy and chaos tests share: real image bytes and a poison corpus, a local HTTP image
server, unique topics, ``python -m service.worker`` subprocesses, and Kafka produce/collect helpers. The
fixtures that use them are in ``tests/conftest.py`` (the broker, one per session) and ``tests/service/conftest.py``."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dangerclip_cli.embedded import free_port
from service.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
ENVELOPE = [("content-type", b"application/json")]


# ---------------------------------------------------------------------------- images
def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small real JPEG whose pixels depend on ``seed``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def png_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels, with almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def huge_gif(width: int = 4000, height: int = 3000) -> bytes:
    """A real GIF with many pixels and few bytes (one colour compresses to almost nothing)."""
    buf = io.BytesIO()
    Image.new("P", (width, height), 3).save(buf, "GIF")
    return buf.getvalue()


def envelope(doc: object) -> bytes:
    return json.dumps(doc).encode()


@dataclass
class Poison:
    name: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str


def poison_corpus(image_base_url: str, max_bytes: int) -> list[Poison]:
    """At least 15 kinds of bad input, each with the dead-letter reason it must get.

    Args:
        image_base_url: ``http://127.0.0.1:PORT`` of an allow-listed server (its ``/missing.jpg`` is a 404).
        max_bytes: the worker's ``max_bytes`` (the oversize records exceed it).
    """
    good = jpeg_bytes(1)
    rng = np.random.default_rng(7)
    cases = [
        Poison("truncated_jpeg", b"p-trunc-jpeg", good[: len(good) // 2], [], "decode_error"),
        Poison("truncated_png", b"p-trunc-png", png_bytes(2)[:120], [], "decode_error"),
        Poison("zero_bytes", b"p-empty", b"", [], "not_an_image"),
        Poison("null_value", b"p-null", None, [], "not_an_image"),
        Poison("random_bytes", b"p-random", rng.bytes(2048), [], "not_an_image"),
        Poison("text", b"p-text", b"hello, this is not an image\n" * 10, [], "not_an_image"),
        Poison("png_50000x50000", b"p-bomb-png", png_claiming(50_000, 50_000), [], "too_many_pixels"),
        Poison("huge_gif", b"p-huge-gif", huge_gif(), [], "too_many_pixels"),
        Poison("oversize_record", b"p-oversize", b"\xff\xd8" + rng.bytes(max_bytes + 10), [], "too_large"),
        Poison("bad_json", b"p-bad-json", b'{"id": "x", "image_b64": ', ENVELOPE, "bad_envelope"),
        Poison("json_not_utf8", b"p-not-utf8", b"\xff\xfe\x00{", ENVELOPE, "bad_envelope"),
        Poison("json_array", b"p-json-array", envelope([1, 2, 3]), ENVELOPE, "bad_envelope"),
        Poison(
            "json_missing_id",
            b"p-no-id",
            envelope({"image_b64": base64.b64encode(good).decode()}),
            ENVELOPE,
            "bad_envelope",
        ),
        Poison("json_missing_image", b"p-no-image", envelope({"id": "p-no-image"}), ENVELOPE, "bad_envelope"),
        Poison(
            "json_wrong_types",
            b"p-wrong-types",
            envelope({"id": 5, "image_b64": 17, "metadata": []}),
            ENVELOPE,
            "bad_envelope",
        ),
        Poison(
            "json_both_sources",
            b"p-both",
            envelope(
                {"id": "p-both", "image_b64": base64.b64encode(good).decode(), "uri": image_base_url + "/good.jpg"}
            ),
            ENVELOPE,
            "bad_envelope",
        ),
        Poison(
            "bad_base64",
            b"p-bad-b64",
            envelope({"id": "p-bad-b64", "image_b64": "@@not base64!!"}),
            ENVELOPE,
            "bad_base64",
        ),
        Poison(
            "base64_of_text",
            b"p-b64-text",
            envelope({"id": "p-b64-text", "image_b64": base64.b64encode(b"just text").decode()}),
            ENVELOPE,
            "not_an_image",
        ),
        Poison(
            "oversize_b64",
            b"p-oversize-b64",
            envelope({"id": "p-oversize-b64", "image_b64": base64.b64encode(rng.bytes(max_bytes + 10)).decode()}),
            ENVELOPE,
            "too_large",
        ),
        Poison(
            "uri_host_not_allowed",
            b"p-uri-host",
            envelope({"id": "p-uri-host", "uri": "http://169.254.169.254/latest/meta-data"}),
            ENVELOPE,
            "uri_not_allowed",
        ),
        Poison(
            "uri_file_scheme",
            b"p-uri-file",
            envelope({"id": "p-uri-file", "uri": "file:///etc/passwd"}),
            ENVELOPE,
            "uri_not_allowed",
        ),
        Poison(
            "uri_404",
            b"p-uri-404",
            envelope({"id": "p-uri-404", "uri": image_base_url + "/missing.jpg"}),
            ENVELOPE,
            "uri_fetch_failed",
        ),
    ]
    assert len({c.reason for c in cases}) >= 8 and len(cases) >= 15
    return cases


# ---------------------------------------------------------------------------- a local image server
class ImageServer:
    """Serves ``/good.jpg`` (a real JPEG); anything else is a 404. 127.0.0.1 only."""

    def __init__(self) -> None:
        body = jpeg_bytes(99)

        class _H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/good.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/")
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------- broker and topics
@dataclass
class Topics:
    input: str
    output: str
    dead_letter: str
    group: str


def make_topics(bootstrap: str, partitions: int = 4) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    ensure_topics(bootstrap, {t.input: partitions, t.output: partitions, t.dead_letter: 1})
    return t


# ---------------------------------------------------------------------------- worker processes
class WorkerProcess:
    """``python -m service.worker`` with settings in ``DANGERCLIP_*`` variables, output to a log file."""

    def __init__(
        self, bootstrap: str, topics: Topics, model: Path, log_dir: Path, name: str = "worker", **settings: object
    ) -> None:
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ)
        env.update(
            {
                "DANGERCLIP_BOOTSTRAP_SERVERS": bootstrap,
                "DANGERCLIP_INPUT_TOPIC": topics.input,
                "DANGERCLIP_OUTPUT_TOPIC": topics.output,
                "DANGERCLIP_DEAD_LETTER_TOPIC": topics.dead_letter,
                "DANGERCLIP_GROUP_ID": topics.group,
                "DANGERCLIP_MODEL_PATH": str(model),
                "DANGERCLIP_METRICS_HOST": "127.0.0.1",
                "DANGERCLIP_METRICS_PORT": str(self.metrics_port),
                "DANGERCLIP_SESSION_TIMEOUT_MS": "6000",
                "DANGERCLIP_HEARTBEAT_INTERVAL_MS": "1000",
                "DANGERCLIP_RETRY_BACKOFF_MS": "200",
                "DANGERCLIP_RETRY_BACKOFF_MAX_MS": "2000",
                "DANGERCLIP_PRODUCE_TIMEOUT_S": "10",
                "DANGERCLIP_INTRA_OP_THREADS": "1",
                "DANGERCLIP_DECODE_WORKERS": "1",
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for k, v in settings.items():
            env[f"DANGERCLIP_{k.upper()}"] = v if isinstance(v, str) else json.dumps(v)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.log()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        """``/metrics`` scraped over HTTP: ``{'name{labels}': value}``."""
        status, text = self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.stop()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        if not self._log.closed:
            self._log.close()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ---------------------------------------------------------------------------- Kafka helpers
def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list]],
    partition_of: dict[bytes, int] | None = None,
) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
    try:
        for key, value, headers in records:
            part = None if partition_of is None or key is None else partition_of.get(key)
            p.send(topic, key=key, value=value, headers=headers, partition=part)
        p.flush(30)
    finally:
        p.close(5)


def collect(bootstrap: str, topics: list[str], n: int, timeout_s: float, settle_s: float = 0.0) -> list:
    """Read every record of ``topics`` from the start until ``n`` arrived (then ``settle_s`` more)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    got: list = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while time.monotonic() < deadline:
            for _, recs in c.poll(timeout_ms=300).items():
                got.extend(recs)
            if len(got) >= n:
                if settle_until is None:
                    settle_until = time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        c.close()
    return got


def read_all(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list:
    """Every record currently in ``topic`` (up to the end offsets taken at the start)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        got: list = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for _, recs in c.poll(timeout_ms=200).items():
                got.extend(recs)
        return got
    finally:
        c.close()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    return last


RECEIPT = re.compile(r"(\S+)/(\d+)@(\d+)>(\S+)/(\d+)@(\d+)")
"""One output in a ``service.delivery.receipts`` line: ``in-topic/p@offset>out-topic/p@offset``."""


def delivery_receipts(log: str) -> list[tuple[tuple[str, int, int], tuple[str, int, int]]]:
    """``[((input topic, partition, offset), (output topic, partition, offset)), ...]`` from a worker's log run with
    ``DANGERCLIP_DEBUG=service.delivery.receipts``."""
    return [
        ((m.group(1), int(m.group(2)), int(m.group(3))), (m.group(4), int(m.group(5)), int(m.group(6))))
        for m in RECEIPT.finditer(log)
    ]
