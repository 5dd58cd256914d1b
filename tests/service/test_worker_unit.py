"""Worker pieces that need no broker."""

from __future__ import annotations

from service.handler import InputRecord
from service.worker import Backoff, _Batch


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


def test_batch_commits_the_next_offset_per_partition() -> None:
    recs = [InputRecord("t", p, o, None, None, b"") for p, o in [(0, 5), (1, 2), (0, 7), (0, 6)]]
    assert _Batch(recs, []).offsets() == {("t", 0): 8, ("t", 1): 3}


# ---------------------------------------------------------------------------- the loop with fake clients
from collections import namedtuple  # noqa: E402

from kafka import TopicPartition  # noqa: E402

from service.metrics import Metrics  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker import Worker  # noqa: E402
from tests.service.conftest import jpeg_bytes  # noqa: E402
from tests.service.test_handler import make_handler  # noqa: E402

CR = namedtuple("CR", "topic partition offset timestamp key value headers")


class FakeConsumer:
    """Serves scripted poll results; records commits and the events around them."""

    def __init__(self, script: list, events: list) -> None:
        self.script, self.events, self.commits, self.listener = list(script), events, [], None

    def subscribe(self, topics, listener=None):  # noqa: ANN001, ANN201
        self.listener = listener

    def poll(self, timeout_ms=0, max_records=None):  # noqa: ANN001, ANN201
        if not self.script:
            return {}
        step = self.script.pop(0)
        if callable(step):
            step(self)
            return {}
        out: dict = {}
        for r in step[:max_records]:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        if len(step) > (max_records or len(step)):
            self.script.insert(0, step[max_records:])
        return out

    def commit(self, offsets):  # noqa: ANN001, ANN201
        self.events.append("commit")
        self.commits.append({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})

    def commit_async(self, offsets, callback=None):  # noqa: ANN001, ANN201
        self.commit(offsets)

    def highwater(self, tp):  # noqa: ANN001, ANN201
        return 10

    def close(self, autocommit=False):  # noqa: ANN001, ANN201
        pass


class FakeFuture:
    def __init__(self, ok: bool) -> None:
        self.is_done, self.exception = True, None if ok else RuntimeError("not acknowledged")

    def succeeded(self) -> bool:
        return self.exception is None


class FakeProducer:
    def __init__(self, events: list, fail_first: int = 0) -> None:
        self.events, self.fail_first, self.sent = events, fail_first, []

    def send(self, topic, value=None, key=None, headers=None, partition=None):  # noqa: ANN001, ANN201
        ok = self.fail_first <= 0
        self.fail_first -= 1
        if ok:
            self.sent.append((topic, key, partition))
        return FakeFuture(ok)

    def flush(self, timeout=None):  # noqa: ANN001, ANN201
        self.events.append("flush")

    def partitions_for(self, topic):  # noqa: ANN001, ANN201
        return {0, 1, 2, 3}

    def close(self, timeout=None):  # noqa: ANN001, ANN201
        pass


def _records(n: int, partition: int = 0, start: int = 0) -> list:
    return [CR("in", partition, start + i, 1_700_000_000_000, f"k{partition}-{start + i}".encode(),
               jpeg_bytes(i, (32, 32)), []) for i in range(n)]


def _worker(script: list, fail_first: int = 0, **settings):  # noqa: ANN202
    events: list = []
    consumer = FakeConsumer(script, events)
    producer = FakeProducer(events, fail_first)
    handler, _, _ = make_handler(**settings)
    s = Settings(_env_file=None, input_topic="in", retry_backoff_ms=1, retry_backoff_max_ms=2, **settings)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: producer)
    return w, consumer, producer, events


def _assign(tps):  # noqa: ANN001, ANN202
    return lambda c: c.listener.on_partitions_assigned([TopicPartition("in", p) for p in tps])


def test_batches_are_flushed_before_their_offsets_are_committed() -> None:
    w, consumer, producer, events = _worker([_assign([0, 1]), _records(5, 0) + _records(3, 1)],
                                            max_batch_size=4, max_batch_wait_ms=0)
    assert w.run(max_records=8, timeout_s=20) == 0
    assert len(producer.sent) == 8
    # every commit comes after a flush, and the commits cover exactly what was produced
    assert events[0] == "flush" and all(events[i - 1] == "flush" for i, e in enumerate(events) if e == "commit")
    merged: dict = {}
    for c in consumer.commits:
        for tp, o in c.items():
            merged[tp] = max(merged.get(tp, 0), o)
    assert merged == {("in", 0): 5, ("in", 1): 3}
    # results keep their input partition number
    assert {p for t, _, p in producer.sent if t == w.settings.output_topic} == {0, 1}


def test_unacknowledged_results_are_retried_not_dropped() -> None:
    w, consumer, producer, _ = _worker([_assign([0]), _records(3)], fail_first=2, max_batch_size=3)
    assert w.run(max_records=3, timeout_s=20) == 0
    assert sorted(k for _, k, _ in producer.sent) == [b"k0-0", b"k0-1", b"k0-2"]
    assert consumer.commits[-1] == {("in", 0): 3}
    assert w.metrics.registry.get_sample_value("dangerclip_broker_errors_total", {"operation": "produce"}) >= 1


def test_revoked_partitions_pending_records_are_dropped_uncommitted() -> None:
    def revoke(c):  # noqa: ANN001, ANN202
        c.listener.on_partitions_revoked([TopicPartition("in", 0)])
        c.listener.on_partitions_assigned([TopicPartition("in", 1)])

    # a long batch window: the records of partition 0 are still pending when it is revoked
    w, consumer, producer, _ = _worker([_assign([0, 1]), _records(2, 0), revoke, _records(2, 1, 0)],
                                       max_batch_size=16, max_batch_wait_ms=2000)
    assert w.run(max_records=2, timeout_s=20) == 0
    assert sorted(k for _, k, _ in producer.sent) == [b"k1-0", b"k1-1"]
    assert all(("in", 0) not in c for c in consumer.commits)
    assert w.metrics.registry.get_sample_value("dangerclip_records_abandoned_total", {"reason": "revoked"}) == 2


def test_stop_finishes_the_batch_in_flight_and_commits_it() -> None:
    w, consumer, producer, _ = _worker([_assign([0]), _records(4)], max_batch_size=4)
    w.handler.scorer.predict = _slow(w.handler.scorer.predict, w)  # stop arrives while the model runs
    assert w.run(timeout_s=20) == 0
    assert len(producer.sent) == 4 and consumer.commits[-1] == {("in", 0): 4}


def _slow(predict, worker):  # noqa: ANN001, ANN202
    def wrapped(batch):  # noqa: ANN001, ANN202
        worker.stop()
        return predict(batch)

    return wrapped
