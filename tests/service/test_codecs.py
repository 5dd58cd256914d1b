"""Compression codecs end to end: a foreign producer (librdkafka, through confluent-kafka) writes real images
with every codec, and the worker's own producer compresses with zstd and lz4; a librdkafka consumer reads
the worker's results back."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.chaos import Acked, Fleet, OutcomeLedger, image_stream, produce_acked, verdict, wait_committed
from tests.support.service import jpeg_bytes, make_topics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 24


def _produce_with_librdkafka(bootstrap: str, topic: str) -> dict[tuple[int, int], Acked]:
    """Partition ``i`` gets ``PER_CODEC`` real JPEGs compressed with ``CODECS[i]``, in batches of several
    records (so the codec compresses whole batches). Returns the acknowledged records by (partition, offset)."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    acked: dict[tuple[int, int], Acked] = {}
    errors: list[str] = []
    t0 = time.time()

    def on_delivery(err, msg) -> None:  # noqa: ANN001
        if err is not None:
            errors.append(f"{msg.key()!r}: {err}")
        else:
            acked[(msg.partition(), msg.offset())] = Acked(msg.key(), msg.partition(), msg.offset(), t0)

    for part, codec in enumerate(CODECS):
        p = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": codec,
                "acks": "all",
                "linger.ms": 50,
                "enable.idempotence": True,
            }
        )
        for i in range(PER_CODEC):
            p.produce(
                topic,
                key=f"{codec}-{i:03d}".encode(),
                value=jpeg_bytes(300 + i),
                partition=part,
                on_delivery=on_delivery,
            )
        p.poll(0)
        assert p.flush(30) == 0, f"{codec}: records left unsent"
    assert not errors, errors
    return acked


def _read_with_librdkafka(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list:
    """Every partition of ``topic`` from the start (assigned, no group) until ``n`` records arrived."""
    import confluent_kafka

    c = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}", "enable.auto.commit": False}
    )
    got: list = []
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append(m)
    finally:
        c.close()
    return got


def test_foreign_producer_every_codec_is_scored(broker, model_path, tmp_path):
    topics = make_topics(broker.bootstrap_servers, partitions=len(CODECS))
    acked = _produce_with_librdkafka(broker.bootstrap_servers, topics.input)
    assert len(acked) == len(CODECS) * PER_CODEC
    ledger = OutcomeLedger(broker.bootstrap_servers, topics).start()
    fleet = Fleet(broker.bootstrap_servers, topics, model_path, tmp_path, max_batch_size="16")
    try:
        fleet.start()
        ledger.wait_complete(acked, 90)
        ends = {p: 1 + max(o for q, o in acked if q == p) for p in range(len(CODECS))}
        v = verdict(
            acked,
            ledger,
            fleet,
            wait_committed(broker.bootstrap_servers, topics.group, topics.input, ends, timeout_s=15),
        )
        fleet.stop_all()
        v.bad_exits = list(fleet.bad_exits)
        assert not v.problems, "\n".join([v.summary(), *v.problems, fleet.logs()])
        outcomes = ledger.snapshot()
        kinds = {CODECS[p]: {o.kind for c in acked if c[0] == p for o in outcomes[c]} for p in range(len(CODECS))}
        assert kinds == {codec: {"result"} for codec in CODECS}, kinds
    finally:
        ledger.stop()
        for w in fleet.workers:
            w.stop()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_worker_compresses_its_own_output(broker, model_path, tmp_path, codec):
    topics = make_topics(broker.bootstrap_servers)
    ledger = OutcomeLedger(broker.bootstrap_servers, topics).start()
    fleet = Fleet(broker.bootstrap_servers, topics, model_path, tmp_path, compression_type=codec)
    try:
        fleet.start().wait_ready(90)
        stream = list(image_stream(topics.input, 60))
        bad = (b"not-an-image", b"plain text, not an image" * 40, [])  # a compressed dead letter too
        acked = produce_acked(broker.bootstrap_servers, topics.input, [*stream, bad])
        missing = ledger.wait_complete(acked, 60)
        assert not missing, fleet.logs()
        # a librdkafka consumer decodes what the worker's kafka-python producer compressed
        results = _read_with_librdkafka(broker.bootstrap_servers, topics.output, len(stream))
        assert sorted(json.loads(m.value())["id"] for m in results) == sorted(k.decode() for k, _, _ in stream)
        dead = _read_with_librdkafka(broker.bootstrap_servers, topics.dead_letter, 1)
        assert [json.loads(m.value())["reason"] for m in dead] == ["not_an_image"]
        fleet.stop_all()
        assert not fleet.bad_exits, fleet.bad_exits
    finally:
        ledger.stop()
        for w in fleet.workers:
            w.stop()
