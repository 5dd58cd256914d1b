"""The Kafka transport and the ``dangerclip serve`` entry point.

One worker is one consumer in a group. Its loop, on the consumer's thread:

1. poll records (at most what the open micro-batch still has room for) and hand each to the decode pool
   at once, so decoding overlaps the batch filling up and the previous batch's inference;
2. close the batch when it holds ``max_batch_size`` records or ``max_batch_wait_ms`` has passed since its
   first record, and hand it to the inference thread — at most one batch is in flight;
3. the inference thread waits for the decodes, scores, produces every result and dead letter
   (``acks=all``, idempotent) and flushes, retrying with back-off while the broker is away;
4. back on the consumer thread, the batch's offsets are committed — only after its records are safe.

On partition revocation the batch in flight is finished and committed (its results are already on the way)
and records not yet in a batch are dropped uncommitted, so the partition's next owner reads them again and
nothing is produced twice. SIGTERM/SIGINT: finish the batch in flight, flush, commit, close, exit 0.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.handler import Handler, InputRecord, ModelError, OutputRecord
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200
"""Longest a poll blocks when no batch is open: bounds how fast a stop request is noticed."""


class Backoff:
    """Exponential back-off between ``first_s`` and ``max_s`` (doubling, reset on success)."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.current = first_s

    def next(self) -> float:
        delay = self.current
        self.current = min(self.max_s, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first_s


@dataclass
class _Batch:
    records: list[InputRecord]
    futures: list[Future[Any]]
    outputs: list[OutputRecord] = field(default_factory=list)
    done_at: float = 0.0

    def offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to commit per ``(topic, partition)``: the batch's highest offset + 1."""
        out: dict[tuple[str, int], int] = {}
        for r in self.records:
            tp = (r.topic, r.partition)
            out[tp] = max(out.get(tp, -1), r.offset + 1)
        return out


def to_input_record(r: Any) -> InputRecord:
    """A kafka-python ``ConsumerRecord`` → the handler's ``InputRecord``."""
    ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
    return InputRecord(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        timestamp_ms=ts,
        key=r.key,
        value=r.value,
        headers=[(k, v) for k, v in (r.headers or [])],
    )


class Worker:
    """A scoring worker: one consumer in the group, one producer, a decode pool and an inference thread.

    Args:
        settings: the process's settings.
        handler: the batch handler (owns the model).
        metrics: the metrics to update (and serve).
        consumer_factory / producer_factory: build kafka-python clients (tests may inject); default from
            ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        metrics: Metrics,
        consumer_factory: Callable[[], Any] | None = None,
        producer_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self._consumer_factory = consumer_factory or self._make_consumer
        self._producer_factory = producer_factory or self._make_producer
        self.consumer: Any = None
        self.producer: Any = None
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self._revocations: collections.deque[set[tuple[str, int]]] = collections.deque()
        self._pending: list[InputRecord] = []
        self._pending_futures: list[Future[Any]] = []
        self._batch_opened: float | None = None
        self._inflight: Future[_Batch] | None = None
        self._inflight_size = 0
        self._next_offset: dict[tuple[str, int], int] = {}
        self._last_tick = time.monotonic()
        self._last_lag = 0.0
        self._running = False
        self._out_partitions: int | None = None
        self.consumed = 0
        self.produced = 0
        self._decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="dangerclip-decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="dangerclip-infer")

    # ------------------------------------------------------------------ clients
    def _client_id(self) -> str:
        return f"{self.settings.client_id}-{socket.gethostname()}-{os.getpid()}"

    def _make_consumer(self) -> Any:
        from kafka import KafkaConsumer

        s = self.settings
        kwargs: dict[str, Any] = dict(
            bootstrap_servers=s.bootstrap_list,
            group_id=s.group_id,
            client_id=self._client_id(),
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            max_poll_records=s.max_batch_size,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            reconnect_backoff_ms=min(s.retry_backoff_ms, 1000),
            reconnect_backoff_max_ms=s.retry_backoff_max_ms,
            **s.kafka_security(),
        )
        kwargs.update(s.consumer_options)
        return KafkaConsumer(**kwargs)

    def _make_producer(self) -> Any:
        from kafka import KafkaProducer

        s = self.settings
        kwargs: dict[str, Any] = dict(
            bootstrap_servers=s.bootstrap_list,
            client_id=self._client_id(),
            acks="all",
            enable_idempotence=s.enable_idempotence,
            linger_ms=5,
            compression_type=s.compression_type,
            reconnect_backoff_ms=min(s.retry_backoff_ms, 1000),
            reconnect_backoff_max_ms=s.retry_backoff_max_ms,
            # A batch's flush should fail (and be retried by us, with the batch intact) rather than hang.
            delivery_timeout_ms=int(s.produce_timeout_s * 1000),
            request_timeout_ms=max(1000, min(30_000, int(s.produce_timeout_s * 1000) // 2)),
            max_block_ms=int(s.produce_timeout_s * 1000),
            **s.kafka_security(),
        )
        kwargs.update(s.producer_options)
        return KafkaProducer(**kwargs)

    def _connect(self) -> bool:
        """Create the clients and subscribe, retrying with back-off until the broker answers or stop."""
        from kafka import ConsumerRebalanceListener

        worker = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                worker._on_revoked([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                worker._on_assigned([(tp.topic, tp.partition) for tp in assigned])

            def on_partitions_lost(self, lost: Any) -> None:
                worker._on_revoked([(tp.topic, tp.partition) for tp in lost], lost=True)

        backoff = Backoff(self.settings.retry_backoff_ms / 1000, self.settings.retry_backoff_max_ms / 1000)
        while not self._stop.is_set():
            self._tick()
            try:
                if self.producer is None:
                    self.producer = self._producer_factory()
                if self.consumer is None:
                    self.consumer = self._consumer_factory()
                    self.consumer.subscribe([self.settings.input_topic], listener=_Listener())
                log.info(
                    "connected to %s; consuming %s as group %s",
                    self.settings.bootstrap_servers,
                    self.settings.input_topic,
                    self.settings.group_id,
                )
                return True
            except Exception as e:  # noqa: BLE001 - NoBrokersAvailable, DNS, TLS: all mean "try again"
                if type(e).__name__ in ("KafkaConfigurationError", "TypeError", "ValueError"):
                    raise  # a mistake in the settings: retrying cannot help
                self.metrics.broker_errors.labels(operation="connect").inc()
                delay = backoff.next()
                log.warning("cannot connect to %s (%s); retrying in %.1fs", self.settings.bootstrap_servers, e, delay)
                self._stop.wait(delay)
        return False

    # ------------------------------------------------------------------ rebalance
    # kafka-python 3 calls these on its IO thread: they must not call blocking consumer APIs (commit,
    # position), and they hand the rest of the work to the consumer thread through ``_revocations``.
    def _on_assigned(self, tps: list[tuple[str, int]]) -> None:
        self.metrics.rebalances.labels(event="assigned").inc()
        self._assigned = frozenset(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.ready.set(1 if self._assigned else 0)
        log.info("assigned partitions %s", sorted(p for _, p in tps))

    def _on_revoked(self, tps: list[tuple[str, int]], lost: bool = False) -> None:
        """Commit the batch in flight for the revoked partitions if it finishes in time; queue the rest.

        Its results are already being produced, so committing them spares the partition's next owner
        from producing them again. When the membership was lost (``lost``) nothing can be committed.
        """
        revoked = set(tps)
        self.metrics.rebalances.labels(event="revoked").inc()
        log.info("partitions %s %s", sorted(p for _, p in tps), "lost" if lost else "revoked")
        self._assigned = frozenset(self._assigned - revoked)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.ready.set(1 if self._assigned else 0)
        fut = self._inflight
        if fut is not None and not lost and revoked:
            try:
                batch = fut.result(timeout=self.settings.produce_timeout_s)
                self._commit_async({tp: o for tp, o in batch.offsets().items() if tp in revoked})
            except Exception as e:  # noqa: BLE001 - not done in time or failed: the next owner redoes it
                log.warning("batch in flight not committed on revocation (%s); its records may be redone", e)
        self._revocations.append(revoked)

    def _commit_async(self, offsets: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return

        def _done(_offsets: Any, response: Any) -> None:
            outcome = "failed" if isinstance(response, Exception) else "ok"
            self.metrics.offset_commits.labels(outcome=outcome).inc()

        payload = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        self.consumer.commit_async(payload, callback=_done)

    def _apply_revocations(self) -> None:
        """On the consumer thread: drop records of revoked partitions that are not yet in a batch.

        They were never produced and are not committed, so their next owner reads them again and nothing
        is produced twice.
        """
        while self._revocations:
            # Even partitions assigned again are dropped: the new assignment restarts them from the
            # committed offset, so these records will be fetched again.
            revoked = self._revocations.popleft()
            keep = [
                (r, f)
                for r, f in zip(self._pending, self._pending_futures, strict=True)
                if (r.topic, r.partition) not in revoked
            ]
            dropped = len(self._pending) - len(keep)
            if dropped:
                self.metrics.records_abandoned.labels(reason="revoked").inc(dropped)
                for r, f in zip(self._pending, self._pending_futures, strict=True):
                    if (r.topic, r.partition) in revoked:
                        f.cancel()
                log.info("dropped %d uncommitted records of revoked partitions (their next owner reads them)", dropped)
            self._pending = [r for r, _ in keep]
            self._pending_futures = [f for _, f in keep]
            if not self._pending:
                self._batch_opened = None
            for tp in revoked:
                self._next_offset.pop(tp, None)
                self.metrics.drop_lag(*tp)

    # ------------------------------------------------------------------ probes
    def _tick(self) -> None:
        self._last_tick = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        """Alive while the loop makes progress (polls, retries) within ``max_poll_interval_ms``."""
        age = time.monotonic() - self._last_tick
        limit = self.settings.max_poll_interval_ms / 1000
        if self._running and age > limit:
            return False, f"worker loop stalled for {age:.0f}s (limit {limit:.0f}s)"
        return True, f"ok (loop ticked {age:.1f}s ago)"

    def ready(self) -> tuple[bool, str]:
        """Ready when the model is loaded and the consumer owns at least one partition."""
        if not self._running:
            return False, "worker not running"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"ok ({len(self._assigned)} partitions)"

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight and exit (safe from a signal handler)."""
        self._stop.set()

    def hard_stop(self) -> None:
        """Give up retrying a batch that cannot be produced (a second signal): exit without committing it."""
        self._stop.set()
        self._hard_stop.set()

    def run(self, max_records: int | None = None, timeout_s: float | None = None) -> int:
        """Consume until stopped (or ``max_records`` results/dead letters, or ``timeout_s``), then drain.

        Returns:
            0 on a clean stop; 1 when the model failed (nothing of the failing batch was committed).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._running = True
        try:
            if not self._connect():
                return 0
            while not self._stop.is_set():
                self._tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if max_records is not None and self.produced >= max_records:
                    break
                self._step()
            self._drain()
            return 0
        except ModelError as e:
            log.error("the model is failing; exiting without committing the batch: %s", e)
            return 1
        except Exception:  # noqa: BLE001 - exit non-zero, uncommitted work is redone by the next worker
            log.exception("worker failed; exiting without committing the batch in flight")
            return 1
        finally:
            self._running = False
            self.metrics.ready.set(0)
            self._close()

    def _step(self) -> None:
        s = self.settings
        wait_s = s.max_batch_wait_ms / 1000
        room = s.max_batch_size - len(self._pending)
        if room > 0:
            if self._batch_opened is not None:
                timeout_ms = max(0, int((self._batch_opened + wait_s - time.monotonic()) * 1000))
            else:
                timeout_ms = IDLE_POLL_MS
            self._poll(timeout_ms, room)
        self._apply_revocations()
        if self._inflight is not None and self._inflight.done():
            self._complete(self._inflight)
            self._inflight = None
        full = len(self._pending) >= s.max_batch_size
        expired = self._batch_opened is not None and time.monotonic() - self._batch_opened >= wait_s
        if self._pending and (full or expired):
            if self._inflight is not None:
                self._complete(self._inflight)
                self._inflight = None
            batch = _Batch(self._pending, self._pending_futures)
            self._pending, self._pending_futures, self._batch_opened = [], [], None
            self._inflight_size = len(batch.records)
            self._inflight = self._infer_pool.submit(self._process, batch)
        self._update_lag()

    def _poll(self, timeout_ms: int, max_records: int) -> None:
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except Exception as e:  # noqa: BLE001 - poll errors are transient broker trouble; back off a little
            self.metrics.broker_errors.labels(operation="poll").inc()
            log.warning("poll failed: %s", e)
            self._stop.wait(self.settings.retry_backoff_ms / 1000)
            return
        for tp, records in polled.items():
            key = (tp.topic, tp.partition)
            for r in records:
                rec = to_input_record(r)
                self._pending.append(rec)
                self._pending_futures.append(self._decode_pool.submit(self.handler.prepare, rec))
                self._next_offset[key] = r.offset + 1
            self.metrics.records_consumed.labels(topic=tp.topic).inc(len(records))
            self.consumed += len(records)
        if self._pending and self._batch_opened is None:
            self._batch_opened = time.monotonic()

    # ------------------------------------------------------------------ inference thread
    def _process(self, batch: _Batch) -> _Batch:
        """Score and produce a batch; returns once every output record is acknowledged by the broker."""
        items = [f.result() for f in batch.futures]
        batch.outputs = self.handler.score(items)
        self._produce(batch.outputs)
        batch.done_at = time.time()
        return batch

    def _produce(self, outputs: list[OutputRecord]) -> None:
        """Send and flush, resending what failed with back-off until everything is acknowledged.

        Stops retrying only on a hard stop (a second signal) — never drops a result silently.
        """
        backoff = Backoff(self.settings.retry_backoff_ms / 1000, self.settings.retry_backoff_max_ms / 1000)
        todo = list(outputs)
        t0 = time.perf_counter()
        attempts = 0
        while todo:
            self._tick()
            sent = []
            try:
                for o in todo:
                    fut = self.producer.send(
                        o.topic, value=o.value, key=o.key, headers=o.headers, partition=self._partition_for(o)
                    )
                    sent.append((o, fut))
            except Exception as e:  # noqa: BLE001 - metadata timeouts and friends: retry the unsent ones
                log.warning("produce failed (%s); will retry", e)
            try:
                self.producer.flush(timeout=self.settings.produce_timeout_s)
            except Exception as e:  # noqa: BLE001 - a flush timeout: the unacknowledged ones are retried
                log.warning("flush failed (%s); will retry", e)
            failed = []
            for o, fut in sent:
                if fut.is_done and fut.succeeded():
                    continue
                err = fut.exception if fut.is_done else None
                if o.kind == "dead_letter" and type(err).__name__ == "MessageSizeTooLargeError":
                    o = self.handler.slim_dead_letter(o)
                failed.append(o)
            failed += todo[len(sent) :]
            if not failed:
                break
            self.metrics.broker_errors.labels(operation="produce").inc()
            self._out_partitions = None  # topic metadata may have changed (broker restart)
            attempts += 1
            delay = backoff.next()
            log.warning("%d of %d records not acknowledged; retrying in %.1fs", len(failed), len(todo), delay)
            todo = failed
            if self._hard_stop.wait(delay):
                raise RuntimeError("hard stop while producing")
            if attempts % 3 == 0:
                # An idempotent producer whose broker lost its state (a restarted or failed-over cluster) can
                # stay in a fatal error state for good; a fresh producer gets a new producer id.
                self._reset_producer()
        self.metrics.produce_duration.observe(time.perf_counter() - t0)

    def _reset_producer(self) -> None:
        log.warning("recreating the producer")
        old, self.producer = self.producer, None
        try:
            old.close(timeout=0)
        except Exception as e:  # noqa: BLE001 - the old producer is broken; closing is best effort
            log.debug("closing the old producer: %s", e)
        try:
            self.producer = self._producer_factory()
        except Exception as e:  # noqa: BLE001 - broker still away: keep the old one, retry later
            log.warning("cannot create a producer yet: %s", e)
            self.producer = old

    def _partition_for(self, o: OutputRecord) -> int | None:
        if o.kind != "result" or self.settings.output_partitioning != "same":
            return None
        if self._out_partitions is None:
            parts = self.producer.partitions_for(self.settings.output_topic)
            self._out_partitions = len(parts) if parts else None
        if not self._out_partitions:
            return None
        return o.source.partition % self._out_partitions

    # ------------------------------------------------------------------ back on the consumer thread
    def _complete(self, fut: Future[_Batch]) -> None:
        """Wait for a batch, account for it, and commit its offsets (only after its results are flushed)."""
        batch = fut.result()  # re-raises ModelError
        now = time.time()
        for o in batch.outputs:
            if o.kind == "result":
                self.metrics.results_produced.labels(topic=o.topic).inc()
                for c in o.flagged:
                    self.metrics.flagged.labels(category=c).inc()
            else:
                self.metrics.dead_letters.labels(topic=o.topic, reason=o.reason or "unknown").inc()
            if o.source.timestamp_ms is not None:
                self.metrics.end_to_end_duration.observe(max(0.0, now - o.source.timestamp_ms / 1000))
        self.produced += len(batch.outputs)
        owned = self._assigned
        mine = {tp: o for tp, o in batch.offsets().items() if tp in owned}
        if len(mine) < len(batch.offsets()):
            log.info("not committing %d partitions of this batch: no longer assigned", len(batch.offsets()) - len(mine))
        self._commit(mine)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        t0 = time.perf_counter()
        backoff = Backoff(self.settings.retry_backoff_ms / 1000, self.settings.retry_backoff_max_ms / 1000)
        payload = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        for attempt in range(5):
            self._tick()
            try:
                self.consumer.commit(payload)
                self.metrics.offset_commits.labels(outcome="ok").inc()
                self.metrics.commit_duration.observe(time.perf_counter() - t0)
                return
            except Exception as e:  # noqa: BLE001 - CommitFailedError after a rebalance is not retriable
                self.metrics.offset_commits.labels(outcome="failed").inc()
                self.metrics.broker_errors.labels(operation="commit").inc()
                retriable = bool(getattr(e, "retriable", False))
                log.warning(
                    "commit of %s failed (attempt %d, %s): %s",
                    offsets,
                    attempt + 1,
                    "retrying" if retriable else "giving up",
                    e,
                )
                if not retriable:
                    break
                self._stop.wait(backoff.next())
        # The results are out; the records will be read again after a restart or rebalance (duplicates
        # with the same ids), which at-least-once allows. A later commit also covers these offsets.

    def _update_lag(self, every_s: float = 1.0) -> None:
        from kafka import TopicPartition

        now = time.monotonic()
        if now - self._last_lag < every_s:
            return
        self._last_lag = now
        for topic, part in list(self._assigned):
            hw = self.consumer.highwater(TopicPartition(topic, part))
            pos = self._next_offset.get((topic, part))
            if hw is not None and pos is not None:
                self.metrics.set_lag(topic, part, hw - pos)

    # ------------------------------------------------------------------ shutdown
    def _drain(self) -> None:
        """Finish the batch in flight, commit it; records not yet in a batch stay uncommitted."""
        if self._inflight is not None:
            log.info("draining: finishing the batch in flight")
            done, _ = concurrent.futures.wait([self._inflight], timeout=self.settings.shutdown_timeout_s)
            if done:
                self._complete(self._inflight)
            else:
                # Broker still away after the grace period: stop retrying, leave the batch uncommitted.
                log.warning(
                    "batch in flight not flushed within %.0fs; exiting without committing it",
                    self.settings.shutdown_timeout_s,
                )
                self._hard_stop.set()
                self.metrics.records_abandoned.labels(reason="shutdown").inc(self._inflight_size)
            self._inflight = None
        if self._pending:
            self.metrics.records_abandoned.labels(reason="shutdown").inc(len(self._pending))
            for f in self._pending_futures:
                f.cancel()
            log.info("left %d records not yet in a batch uncommitted (they will be read again)", len(self._pending))
            self._pending, self._pending_futures = [], []

    def _close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("closing the consumer: %s", e)
            self.consumer = None
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("closing the producer: %s", e)
            self.producer = None
        log.info(
            "worker stopped: %d records consumed, %d results and dead letters produced",
            self.consumed,
            self.produced,
        )


# ---------------------------------------------------------------------------- building a worker
def build(settings: Settings, metrics: Metrics | None = None) -> tuple[Worker, Metrics]:
    """Load the model and assemble a worker from settings."""
    from dangerclip.scorer import DangerScorer

    if settings.model_path is None:
        raise ValueError("no model: set DANGERCLIP_MODEL_PATH or pass --model")
    metrics = metrics or Metrics()
    scorer = DangerScorer(
        settings.model_path,
        providers=settings.provider_list,
        intra_op_threads=settings.intra_op_threads,
        thresholds=settings.thresholds or None,
    )
    card = scorer.card
    metrics.set_model(
        name=card.name,
        version=card.version,
        sha256=scorer.sha256,
        provider=scorer.provider,
        mode=card.mode,
        trained=card.trained,
    )
    if not card.trained:
        log.warning("model %s %s is UNTRAINED: its scores are meaningless", card.name, card.version)
    handler = Handler(scorer, settings, metrics)
    return Worker(settings, handler, metrics), metrics


def serve(settings: Settings, max_records: int | None = None, timeout_s: float | None = None) -> int:
    """Run one worker with its HTTP server until SIGTERM/SIGINT. Returns the process exit code."""
    from service.http import HealthServer

    # kafka-python logs every connection at INFO; its warnings and errors are what an operator needs.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    worker, metrics = build(settings)
    server = None
    if settings.metrics_enabled:
        server = HealthServer(
            metrics.registry, settings.metrics_host, settings.metrics_port, worker.alive, worker.ready
        ).start()
    signals_seen = []

    def _on_signal(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            log.info("received %s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
            worker.stop()
        else:
            log.warning("second signal: stopping retries now")
            worker.hard_stop()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run(max_records=max_records, timeout_s=timeout_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------- dangerclip serve
_CLI_FIELDS = {
    "model": "model_path",
    "bootstrap_servers": "bootstrap_servers",
    "input_topic": "input_topic",
    "output_topic": "output_topic",
    "dead_letter_topic": "dead_letter_topic",
    "group_id": "group_id",
    "max_batch_size": "max_batch_size",
    "max_batch_wait_ms": "max_batch_wait_ms",
    "metrics_host": "metrics_host",
    "metrics_port": "metrics_port",
    "providers": "providers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a Kafka scoring worker. Every setting comes from DANGERCLIP_* environment variables "
        "(see --env-help); the options below override them."
    )
    parser.add_argument("--model", help="the exported .onnx model (DANGERCLIP_MODEL_PATH)")
    parser.add_argument("--bootstrap-servers", help="host:port[,host:port] (DANGERCLIP_BOOTSTRAP_SERVERS)")
    parser.add_argument("--input-topic")
    parser.add_argument("--output-topic")
    parser.add_argument("--dead-letter-topic")
    parser.add_argument("--group-id")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-batch-wait-ms", type=int)
    parser.add_argument("--metrics-host")
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--providers", help="auto, cpu, cuda, tensorrt")
    parser.add_argument(
        "--max-records",
        type=int,
        default=None,
        help="exit after this many results and dead letters (for tests and benchmarks)",
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines (DANGERCLIP_LOG_JSON)")
    parser.add_argument("--env-help", action="store_true", help="list every DANGERCLIP_* variable and exit")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from the environment, overridden by the command-line options that were given."""
    overrides = {f: getattr(args, a) for a, f in _CLI_FIELDS.items() if getattr(args, a, None) is not None}
    overrides.update(extra)
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    if args.env_help:
        for name, doc in Settings.model_construct().env_help():
            sys.stdout.write(f"{name:<42} {doc}\n")
        return 0
    try:
        settings = settings_from_args(args)
    except Exception as e:  # noqa: BLE001 - pydantic's message names the bad variable
        sys.stderr.write(f"dangerclip serve: invalid settings: {e}\n")
        return 2
    if settings.log_json and not args.json_logs:
        from dangerclip.cli import setup_logging

        setup_logging(json_logs=True)
    try:
        return serve(settings, max_records=args.max_records, timeout_s=args.max_seconds)
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"dangerclip serve: {e}\n")
        return 2


if __name__ == "__main__":
    from dangerclip.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
