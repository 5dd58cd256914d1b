#!/usr/bin/env python3
"""Stream a folder of images to the DangerCLIP input topic (the compose stack's ``producer`` service).

Each image file becomes one record: the raw bytes as the value, the path relative to the folder as the key
(the content id the result carries), and a ``content-type`` header from the file extension. With
``--envelope`` it sends JSON envelopes ``{"id", "image_b64", "metadata"}`` instead, the other encoding the
worker accepts. Only kafka-python and the standard library, so it runs in the serving image.

    python deploy/compose/produce_folder.py --folder images/ --bootstrap-servers localhost:9094
    python deploy/compose/produce_folder.py --folder images/ --repeat 0 --rate 20   # forever, 20 images/s

Defaults come from the worker's own variables (``DANGERCLIP_BOOTSTRAP_SERVERS``,
``DANGERCLIP_INPUT_TOPIC``) so one ``.env`` drives both.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import mimetypes
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("dangerclip.produce_folder")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted so runs are reproducible."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def records(
    folder: Path, files: list[Path], envelope: bool, round_: int
) -> Iterator[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``(key, value, headers)`` for each file; later rounds get ``#round`` ids so results stay distinct."""
    for path in files:
        cid = path.relative_to(folder).as_posix() + (f"#{round_}" if round_ else "")
        data = path.read_bytes()
        if envelope:
            doc = {
                "id": cid,
                "image_b64": base64.b64encode(data).decode("ascii"),
                "metadata": {"source": "produce_folder", "file": path.name},
            }
            yield cid.encode(), json.dumps(doc).encode(), [("content-type", b"application/json")]
        else:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            yield cid.encode(), data, [("content-type", ctype.encode())]


def produce(
    folder: Path,
    bootstrap_servers: str,
    topic: str,
    repeat: int = 1,
    rate: float = 0.0,
    envelope: bool = False,
    max_seconds: float = 0.0,
    producer_options: dict | None = None,
) -> int:
    """Send every image in ``folder`` ``repeat`` times (0 = until ``max_seconds`` or Ctrl-C).

    Args:
        rate: images per second (0 = as fast as the broker takes them).
        max_seconds: stop after this long (0 = no limit).

    Returns:
        The number of records the broker acknowledged.
    """
    from kafka import KafkaProducer  # imported here so --help works without kafka-python

    files = image_files(folder)
    if not files:
        raise SystemExit(f"no image files under {folder}")
    producer = KafkaProducer(
        bootstrap_servers=[s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        acks="all",
        linger_ms=5,
        max_request_size=32 * 1024 * 1024,
        **(producer_options or {}),
    )
    sent, start = 0, time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    futures = []
    try:
        round_, out_of_time = 0, False
        while (repeat == 0 or round_ < repeat) and not out_of_time:
            for key, value, headers in records(folder, files, envelope, round_):
                if max_seconds and time.monotonic() - start > max_seconds:
                    out_of_time = True
                    break
                futures.append(producer.send(topic, key=key, value=value, headers=headers))
                sent += 1
                if interval:
                    time.sleep(max(0.0, start + sent * interval - time.monotonic()))
            round_ += 1
        producer.flush(timeout=60)
        acked = sum(1 for f in futures if f.succeeded())
    finally:
        producer.close(timeout=10)
    elapsed = time.monotonic() - start
    log.info("sent %d records (%d acknowledged) from %s to %s in %.1fs", sent, acked, folder, topic, elapsed)
    return acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(os.environ.get("PRODUCER_FOLDER", "/images")))
    parser.add_argument("--bootstrap-servers", default=os.environ.get("DANGERCLIP_BOOTSTRAP_SERVERS", "localhost:9094"))
    parser.add_argument("--topic", default=os.environ.get("DANGERCLIP_INPUT_TOPIC", "dangerclip.images"))
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("PRODUCER_REPEAT", "1")),
        help="passes over the folder; 0 = until --max-seconds or Ctrl-C",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("PRODUCER_RATE", "0")),
        help="images per second (0 = unthrottled)",
    )
    parser.add_argument("--max-seconds", type=float, default=float(os.environ.get("PRODUCER_MAX_SECONDS", "0")))
    parser.add_argument(
        "--envelope",
        action="store_true",
        default=os.environ.get("PRODUCER_ENVELOPE", "") in ("1", "true"),
        help="send JSON envelopes instead of raw image bytes",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        acked = produce(
            args.folder, args.bootstrap_servers, args.topic, args.repeat, args.rate, args.envelope, args.max_seconds
        )
    except KeyboardInterrupt:
        return 130
    return 0 if acked else 1


if __name__ == "__main__":
    sys.exit(main())
