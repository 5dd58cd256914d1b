"""Worker pieces that need no broker."""

from __future__ import annotations

from service.worker import Backoff


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


# ---------------------------------------------------------------------------- the loop with fake clients
from collections import namedtuple  # noqa: E402

from kafka import TopicPartition  # noqa: E402

from service.metrics import Metrics  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker import Worker  # noqa: E402
from tests.support.fakes import make_handler  # noqa: E402
from tests.support.service import jpeg_bytes  # noqa: E402

CR = namedtuple("CR", "topic partition offset timestamp key value headers")


class FakeConsumer:
    """Serves scripted poll results; records commits and the events around them."""

    def __init__(self, script: list, events: list) -> None:
        self.script, self.events, self.commits, self.listener = list(script), events, [], None

    def subscribe(self, topics, listener=None):  # noqa: ANN001, ANN201
        self.listener = listener
        self.assigned: set = set()
        self.paused_set: set = set()
        self.seeks: list = []

    def assignment(self):  # noqa: ANN201
        return set(self.assigned)

    def pause(self, *tps):  # noqa: ANN002, ANN201
        self.paused_set |= set(tps)

    def resume(self, *tps):  # noqa: ANN002, ANN201
        self.paused_set -= set(tps)

    def paused(self):  # noqa: ANN201
        return set(self.paused_set)

    def seek(self, tp, offset):  # noqa: ANN001, ANN201
        self.seeks.append(((tp.topic, tp.partition), offset))

    def committed(self, tp, timeout_ms=None):  # noqa: ANN001, ANN201
        return None

    def partitions_for_topic(self, topic):  # noqa: ANN001, ANN201
        return {0, 1, 2, 3}

    def position(self, tp, timeout_ms=None):  # noqa: ANN001, ANN201
        return None

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

    def commit(self, offsets, timeout_ms=None):  # noqa: ANN001, ANN201
        self.events.append("commit")
        self.commits.append({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})

    def commit_async(self, offsets, callback=None):  # noqa: ANN001, ANN201
        self.commit(offsets)

    def highwater(self, tp):  # noqa: ANN001, ANN201
        return 10

    def close(self, autocommit=False, timeout_ms=None):  # noqa: ANN001, ANN201
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
    return [
        CR(
            "in",
            partition,
            start + i,
            1_700_000_000_000,
            f"k{partition}-{start + i}".encode(),
            jpeg_bytes(i, (32, 32)),
            [],
        )
        for i in range(n)
    ]


def _worker(script: list, fail_first: int = 0, **settings):  # noqa: ANN202
    events: list = []
    consumer = FakeConsumer(script, events)
    producer = FakeProducer(events, fail_first)
    handler, _, _ = make_handler(**settings)
    s = Settings(_env_file=None, input_topic="in", retry_backoff_ms=1, retry_backoff_max_ms=2, **settings)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: producer)
    return w, consumer, producer, events


def _assign(tps):  # noqa: ANN001, ANN202
    def step(c):  # noqa: ANN001, ANN202
        c.assigned = {TopicPartition("in", p) for p in tps}
        c.listener.on_partitions_assigned([TopicPartition("in", p) for p in tps])

    return step


def test_batches_are_flushed_before_their_offsets_are_committed() -> None:
    w, consumer, producer, events = _worker(
        [_assign([0, 1]), _records(5, 0) + _records(3, 1)], max_batch_size=4, max_batch_wait_ms=0
    )
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
    keys = [k for _, k, _ in producer.sent]
    # the failed records and everything after them are resent in order: the last copies keep input order
    assert keys[-3:] == [b"k0-0", b"k0-1", b"k0-2"]
    assert consumer.commits[-1] == {("in", 0): 3}
    assert w.metrics.registry.get_sample_value("dangerclip_broker_errors_total", {"operation": "produce"}) >= 1


def test_revoked_partitions_pending_records_are_dropped_uncommitted() -> None:
    def revoke(c):  # noqa: ANN001, ANN202
        c.listener.on_partitions_revoked([TopicPartition("in", 0)])
        c.assigned = {TopicPartition("in", 1)}
        c.listener.on_partitions_assigned([TopicPartition("in", 1)])

    # a long batch window: the records of partition 0 are still pending when it is revoked
    w, consumer, producer, _ = _worker(
        [_assign([0, 1]), _records(2, 0), revoke, _records(2, 1, 0)], max_batch_size=16, max_batch_wait_ms=2000
    )
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


def test_a_partition_handed_straight_back_is_sought_back_to_its_dropped_records() -> None:
    # kafka-python keeps the fetch position of a partition the member owned before the rebalance: without a
    # seek the dropped records would be skipped and the next commit would pass them (the reported loss)
    def rebalance(c):  # noqa: ANN001, ANN202
        c.listener.on_partitions_revoked([TopicPartition("in", 0)])
        c.listener.on_partitions_assigned([TopicPartition("in", 0)])

    w, consumer, producer, _ = _worker(
        [_assign([0]), _records(3, 0), rebalance, _records(3, 0)], max_batch_size=16, max_batch_wait_ms=2000
    )
    assert w.run(max_records=3, timeout_s=20) == 0
    assert consumer.seeks == [(("in", 0), 0)]
    assert consumer.commits[-1] == {("in", 0): 3}


def test_a_broken_model_keeps_its_batch_opens_the_circuit_and_recovers() -> None:
    w, consumer, producer, _ = _worker(
        [_assign([0]), _records(2)], max_batch_size=2, circuit_breaker_threshold=2, circuit_breaker_reset_s=0.05
    )
    scorer = w.handler.scorer
    real, calls = scorer.predict, {"n": 0}
    states: list = []

    def broken_then_fixed(batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        states.append((w.ready()[0], w.metrics.registry.get_sample_value("dangerclip_circuit_open")))
        if calls["n"] <= 12:  # batch, one by one, probe: three calls per failed attempt
            raise RuntimeError("CUDA error: device lost")
        return real(batch)

    scorer.predict = broken_then_fixed
    assert w.run(max_records=2, timeout_s=20) == 0
    assert sorted(k for _, k, _ in producer.sent) == [b"k0-0", b"k0-1"]  # scored, not dead-lettered
    assert all(t == w.settings.output_topic for t, _, _ in producer.sent)
    assert (False, 1.0) in states  # the circuit was open (not ready) while it failed
    assert w.metrics.registry.get_sample_value("dangerclip_circuit_open") == 0
    assert consumer.commits[-1] == {("in", 0): 2}


class _Refusing(FakeProducer):
    """Refuses any record over ``limit`` bytes at send(), as kafka-python does past max_request_size."""

    def __init__(self, events: list, limit: int) -> None:
        super().__init__(events)
        self.limit = limit

    def send(self, topic, value=None, key=None, headers=None, partition=None):  # noqa: ANN001, ANN201
        from kafka.errors import MessageSizeTooLargeError

        if len(value or b"") + len(key or b"") > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        return super().send(topic, value, key, headers, partition)


def test_a_record_the_broker_refuses_as_too_large_gets_a_terminal_outcome_and_the_partition_flows() -> None:
    events: list = []
    big = CR("in", 0, 0, None, b"big", b"\x00" * 300_000, [])
    script = [_assign([0]), [big] + _records(2, 0, start=1)]
    consumer = FakeConsumer(script, events)
    producer = _Refusing(events, limit=50_000)
    handler, _, _ = make_handler(dead_letter_max_value_bytes=10_000_000)
    s = Settings(_env_file=None, input_topic="in", retry_backoff_ms=1, retry_backoff_max_ms=2, max_batch_size=3)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: producer)
    assert w.run(max_records=3, timeout_s=20) == 0
    assert [(t, k) for t, k, _ in producer.sent] == [
        (s.dead_letter_topic, b"big"),
        (s.output_topic, b"k0-1"),
        (s.output_topic, b"k0-2"),
    ]
    assert consumer.commits[-1] == {("in", 0): 3}


def test_shutdown_is_bounded_while_a_produce_is_stuck() -> None:
    import threading
    import time

    class Stuck(FakeProducer):
        def flush(self, timeout=None):  # noqa: ANN001, ANN201
            time.sleep(min(timeout or 60, 60))

    events: list = []
    consumer = FakeConsumer([_assign([0]), _records(2)], events)
    handler, _, _ = make_handler()
    s = Settings(_env_file=None, input_topic="in", max_batch_size=2, produce_timeout_s=60, shutdown_timeout_s=4)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: Stuck(events))
    threading.Timer(1.0, w.stop).start()
    t0 = time.monotonic()
    assert w.run(timeout_s=30) == 0
    assert time.monotonic() - t0 < 1.0 + 4 + 1.5
    assert consumer.commits == []  # nothing acknowledged, nothing committed
    assert w.metrics.registry.get_sample_value("dangerclip_records_abandoned_total", {"reason": "produce_failed"}) == 2


def test_a_poll_error_no_retry_can_fix_ends_the_worker_loudly() -> None:
    from kafka.errors import UnsupportedCodecError

    class Undecodable(FakeConsumer):
        def poll(self, timeout_ms=0, max_records=None):  # noqa: ANN001, ANN201
            if self.script:
                return super().poll(timeout_ms, max_records)
            raise UnsupportedCodecError("Libraries for lz4 compression codec not found")

    events: list = []
    consumer = Undecodable([_assign([0])], events)
    handler, _, _ = make_handler()
    s = Settings(_env_file=None, input_topic="in", retry_backoff_ms=1, retry_backoff_max_ms=2)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: FakeProducer(events))
    assert w.run(timeout_s=20) == 1  # not alive-but-idle forever
    assert w.metrics.registry.get_sample_value("dangerclip_broker_errors_total", {"operation": "poll"}) == 3


def test_partitions_are_paused_while_the_buffered_bytes_are_over_the_cap() -> None:
    import time

    events: list = []
    big = [CR("in", 0, i, None, f"b{i}".encode(), b"\xff" * 4000, []) for i in range(3)]
    consumer = FakeConsumer([_assign([0]), big], events)
    paused_while_delivering: list = []

    class Slow(FakeProducer):
        def flush(self, timeout=None):  # noqa: ANN001, ANN201 - the loop keeps polling meanwhile
            time.sleep(0.5)
            paused_while_delivering.append(set(consumer.paused_set))
            super().flush(timeout)

    handler, _, _ = make_handler()
    s = Settings(_env_file=None, input_topic="in", max_batch_size=3, max_buffered_bytes=5000)
    w = Worker(s, handler, Metrics(), consumer_factory=lambda: consumer, producer_factory=lambda: Slow(events))
    assert w.run(max_records=3, timeout_s=20) == 0
    assert paused_while_delivering == [{TopicPartition("in", 0)}]  # 12 000 bytes held, cap 5 000
    assert consumer.paused_set == set()  # resumed once the batch was done
    assert consumer.commits[-1] == {("in", 0): 3}


def test_a_circuit_open_too_long_fails_liveness_so_the_worker_is_restarted() -> None:
    import threading

    w, _, _, _ = _worker(
        [_assign([0]), _records(1)],
        max_batch_size=1,
        circuit_breaker_threshold=1,
        circuit_breaker_reset_s=0.05,
        circuit_open_restart_s=0.3,
    )
    w.handler.scorer.fail_always = True
    seen: list = []

    def watch() -> None:
        import time

        for _ in range(40):
            seen.append((w.ready()[0], w.alive()[0]))
            time.sleep(0.05)
        w.stop()

    threading.Thread(target=watch, daemon=True).start()
    assert w.run(timeout_s=20) == 0
    assert (False, True) in seen and (False, False) in seen  # not ready first, then not alive either
