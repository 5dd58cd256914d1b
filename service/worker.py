"""The Kafka transport: one consumer in the group, its loop, and the promise it keeps.

The promise: every input record gets at least one result or dead letter; its offset is committed only
after that output is acknowledged; memory stays bounded; a stop ends the process within
``shutdown_timeout_s``. The loop, on the consumer's thread, never blocks longer than a short poll:

1. poll records (at most what the open micro-batch has room for) and hand each to the decode pool at once,
   so decoding overlaps the batch filling up and the previous batch's inference;
2. close the batch when it holds ``max_batch_size`` records or ``max_batch_wait_ms`` has passed since its
   first record, and hand it to the inference thread — at most one batch is in flight;
3. the inference thread waits for the decodes, scores, and delivers every output (``service.delivery``);
4. back on the consumer thread, once the batch is done, its records are finished in the ``Checkpoint``
   and what it allows is committed. While a batch is in flight the loop keeps polling: partitions are
   paused when the next batch is full or ``max_buffered_bytes`` is held, so the client keeps its
   membership, and lag and liveness keep being reported.

Rebalances: the listener runs on the client's IO thread and never blocks: records of revoked partitions
that are not yet in a batch are dropped, and a partition that comes straight back is sought back to the
first dropped record (see ``service.checkpoint``); the batch in flight finishes and commits what its
partitions still owned allow. A model that fails (and fails a blank probe) keeps its batch: the batch is
retried with back-off and, after ``circuit_breaker_threshold`` failures in a row, the circuit opens:
consumption stops and readiness goes false until the model answers again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dangerclip.runtime.errors import describe_error
from service import kafka_errors
from service.checkpoint import Checkpoint, PartitionState, TopicPartition
from service.delivery import Aborted, Backoff, Delivery
from service.handler import Handler, InputRecord, ModelError, OutputRecord
from service.metrics import Metrics
from service.settings import Settings

__all__ = ["Backoff", "Worker", "to_input_record"]

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200
"""Longest a poll blocks: bounds how fast a finished batch, a stop or a timer is noticed."""


BOOTSTRAP_TIMEOUT_MS = 3000
"""How long one attempt to reach the bootstrap servers may block (less when the run's deadline is nearer): our
own back-off, deadline and stop flag take over between attempts, so SIGTERM is honoured within this."""

UNREACHABLE_WARN_FIRST_S = 5.0
UNREACHABLE_WARN_MAX_S = 300.0
"""While the brokers cannot be reached: a WARNING after 5 s, then at doubling intervals up to every 5 minutes
(each failed attempt in between is a DEBUG line); ``/readyz`` carries the reason all along."""

CLOSE_RESERVE_S = 3.0
"""Of ``shutdown_timeout_s``, what is kept for closing the clients (leaving the group, closing the producer)."""


@dataclass
class _Item:
    """A polled record, the future of its decode, and the partition state it was polled under."""

    record: InputRecord
    future: Future[Any]
    state: PartitionState

    @property
    def size(self) -> int:
        return len(self.record.value or b"")


@dataclass
class _Batch:
    items: list[_Item]
    outputs: list[OutputRecord] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(it.size for it in self.items)


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
        self._bootstrap_ms = BOOTSTRAP_TIMEOUT_MS
        self.consumer: Any = None
        self._stop = threading.Event()
        self._abort = threading.Event()
        self.delivery = Delivery(settings, handler, metrics, producer_factory or self._make_producer, self._abort)
        # The rebalance listener runs on the client's IO thread; this lock guards what it shares with the loop.
        self._lock = threading.Lock()
        self.checkpoint = Checkpoint()
        self._pending: list[_Item] = []
        self._batch_opened: float | None = None
        self._inflight: Future[_Batch] | None = None
        self._inflight_batch: _Batch | None = None
        self._retry: tuple[_Batch, float] | None = None
        self._new_partitions: list[TopicPartition] = []
        self._failures = 0
        self._circuit_since: float | None = None
        self._poll_errors = 0
        self._flushes = 0
        self._last_tick = time.monotonic()
        self._last_metrics = 0.0
        self._last_topic_check = 0.0
        self._running = False
        self._stopped_at: float | None = None
        self._not_ready_because = "not connected to the brokers yet"
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
            bootstrap_timeout_ms=self._bootstrap_ms,
            **s.kafka_security(),
        )
        if s.group_instance_id:
            kwargs["group_instance_id"] = s.group_instance_id
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
            max_request_size=s.max_message_bytes,
            reconnect_backoff_ms=min(s.retry_backoff_ms, 1000),
            reconnect_backoff_max_ms=s.retry_backoff_max_ms,
            # A batch's flush should fail (and be retried by us, with the batch intact) rather than hang.
            delivery_timeout_ms=int(s.produce_timeout_s * 1000),
            request_timeout_ms=max(1000, min(30_000, int(s.produce_timeout_s * 1000) // 2)),
            max_block_ms=int(s.produce_timeout_s * 1000),
            bootstrap_timeout_ms=self._bootstrap_ms,
            **s.kafka_security(),
        )
        kwargs.update(s.producer_options)
        return KafkaProducer(**kwargs)

    def check_codecs(self) -> None:
        """Fail at start, with a clear message, when the produce codec's library is missing."""
        from kafka import codec

        have = {"gzip": codec.has_gzip, "snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
        missing = sorted(name for name, ok in have.items() if not ok())
        if self.settings.compression_type in missing:
            raise ValueError(
                f"compression_type {self.settings.compression_type} needs its library, which is not installed"
            )
        if missing:
            log.warning("no library for the %s codecs: records compressed with them cannot be read", missing)

    def _connect(self, deadline: float | None = None) -> bool:
        """Create the clients and subscribe, retrying with back-off until the broker answers or stop.

        Raises:
            ValueError: a setting that no retry can fix (a bad option, a missing codec library, ...).
        """
        from kafka import ConsumerRebalanceListener

        worker = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                worker._on_revoked([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                worker._on_assigned([(tp.topic, tp.partition) for tp in assigned])

            def on_partitions_lost(self, lost: Any) -> None:
                worker._on_revoked([(tp.topic, tp.partition) for tp in lost], lost=True)

        self.check_codecs()
        backoff = Backoff(self.settings.retry_backoff_ms / 1000, self.settings.retry_backoff_max_ms / 1000)
        log.info(
            "connecting to %s (%s) as group %s",
            self.settings.bootstrap_servers,
            self.settings.security_protocol,
            self.settings.group_id,
        )
        since = time.monotonic()
        warn_at, warn_every = since + UNREACHABLE_WARN_FIRST_S, UNREACHABLE_WARN_FIRST_S
        while not self._stop.is_set():
            self._tick()
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("gave up connecting to %s: time is up", self.settings.bootstrap_servers)
                return False
            left_ms = BOOTSTRAP_TIMEOUT_MS if deadline is None else int((deadline - time.monotonic()) * 1000)
            self._bootstrap_ms = max(100, min(BOOTSTRAP_TIMEOUT_MS, left_ms))
            try:
                self.delivery.connect()
                if self.consumer is None:
                    self.consumer = self._consumer_factory()
                    self.consumer.subscribe([self.settings.input_topic], listener=_Listener())
                log.info(
                    "connected to %s; joining group %s for %s",
                    self.settings.bootstrap_servers,
                    self.settings.group_id,
                    self.settings.input_topic,
                )
                self._not_ready_because = f"joining group {self.settings.group_id}: no partitions assigned yet"
                return True
            except Exception as e:  # noqa: BLE001 - sorted into "try again" and "cannot work"
                retriable = isinstance(e, OSError) or kafka_errors.is_a(e, kafka_errors.RETRIABLE_CONNECT)
                if not retriable:
                    raise ValueError(f"cannot create the Kafka clients: {type(e).__name__}: {e}") from e
                self.metrics.broker_errors.labels(operation="connect").inc()
                delay = backoff.next()
                self._not_ready_because = (
                    f"cannot reach the brokers at {self.settings.bootstrap_servers} for "
                    f"{time.monotonic() - since:.0f}s: {describe_error(e)}"
                )
                now = time.monotonic()
                if now >= warn_at:
                    log.warning("%s; still retrying", self._not_ready_because)
                    warn_every = min(2 * warn_every, UNREACHABLE_WARN_MAX_S)
                    warn_at = now + warn_every
                else:
                    log.debug("%s; retrying in %.1fs", self._not_ready_because, delay)
                if deadline is not None:
                    delay = max(0.0, min(delay, deadline - time.monotonic()))
                self._stop.wait(delay)
        return False

    # ------------------------------------------------------------------ rebalance (client IO thread)
    def _on_assigned(self, tps: list[TopicPartition]) -> None:
        from kafka import TopicPartition as KafkaTP

        with self._lock:
            seeks = self.checkpoint.assign(tps)
            self._new_partitions.extend(tps)
            for tp, offset in seeks.items():
                try:
                    self.consumer.seek(KafkaTP(*tp), offset)
                    self.checkpoint.resumed(tp)
                    log.info("partition %d resumes at %d (records dropped at revocation come again)", tp[1], offset)
                except Exception as e:  # noqa: BLE001 - the commit point stays below the dropped records
                    log.error("cannot seek partition %d back to %d: %s", tp[1], offset, e)
            owned = len(self.checkpoint.owned)
        self.metrics.rebalances.labels(event="assigned").inc()
        self.metrics.assigned_partitions.set(owned)
        self._set_ready()
        log.info("assigned partitions %s of %s; ready", sorted(p for _, p in tps), self.settings.input_topic)
        with self._lock:
            if not self.checkpoint.owned:
                self._not_ready_because = "in the group, but no partition assigned (more workers than partitions?)"

    def _on_revoked(self, tps: list[TopicPartition], lost: bool = False) -> None:
        """Drop the records of ``tps`` not yet in a batch; never block (this is the client's IO thread)."""
        revoked = set(tps)
        with self._lock:
            keep, dropped = [], 0
            for it in self._pending:
                if (it.record.topic, it.record.partition) in revoked:
                    it.future.cancel()
                    it.state.dropped(it.record.offset)
                    dropped += 1
                else:
                    keep.append(it)
            self._pending = keep
            if not keep:
                self._batch_opened = None
            self.checkpoint.revoke(revoked, lost=lost)
            owned = len(self.checkpoint.owned)
        if dropped:
            self.metrics.records_abandoned.labels(reason="revoked").inc(dropped)
            log.info("dropped %d records of revoked partitions not yet in a batch; they will be read again", dropped)
        for tp in revoked:
            self.metrics.drop_partition(*tp)
        self.metrics.rebalances.labels(event="revoked").inc()
        self.metrics.assigned_partitions.set(owned)
        self._set_ready()
        log.info("partitions %s %s", sorted(p for _, p in tps), "lost" if lost else "revoked")

    # ------------------------------------------------------------------ probes
    def _tick(self) -> None:
        self._last_tick = time.monotonic()

    def _set_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready()[0] else 0)

    def alive(self) -> tuple[bool, str]:
        """Alive while the loop makes progress within ``max_poll_interval_ms`` and the circuit has not been
        open for ``circuit_open_restart_s`` (a restart may bring a broken GPU context back)."""
        age = time.monotonic() - self._last_tick
        limit = self.settings.max_poll_interval_ms / 1000
        if self._running and age > limit:
            return False, f"worker loop stalled for {age:.0f}s (limit {limit:.0f}s)"
        since = self._circuit_since
        if since is not None and time.monotonic() - since > self.settings.circuit_open_restart_s:
            return False, f"model circuit open for {time.monotonic() - since:.0f}s: restart me"
        return True, f"ok (loop ticked {age:.1f}s ago)"

    def ready(self) -> tuple[bool, str]:
        """Ready when running, the model works (circuit closed) and the consumer owns a partition."""
        if not self._running:
            return False, "worker not running"
        if self._circuit_since is not None:
            return False, "model failing: circuit open, consumption stopped"
        if not self.checkpoint.owned:
            return False, self._not_ready_because
        return True, f"ok ({len(self.checkpoint.owned)} partitions)"

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight and exit within ``shutdown_timeout_s`` (safe from a
        signal handler)."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stop.set()

    def _shutdown_deadline(self) -> float:
        start = self._stopped_at if self._stopped_at is not None else time.monotonic()
        return start + self.settings.shutdown_timeout_s

    def hard_stop(self) -> None:
        """Stop retrying the batch in flight: exit without committing it."""
        self._stop.set()
        self._abort.set()

    def run(self, max_records: int | None = None, timeout_s: float | None = None) -> int:
        """Consume until stopped (or ``max_records`` outputs, or ``timeout_s``), then drain.

        Returns:
            0 on a clean stop; 1 when the worker cannot go on (a poll error no retry can fix).

        Raises:
            ValueError: the settings cannot work (raised before anything is consumed).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._running = True
        try:
            if not self._connect(deadline):
                return 0
            while not self._stop.is_set():
                self._tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if max_records is not None and self.produced >= max_records:
                    break
                if not self._step():
                    return 1
            if self._stopped_at is None:
                self._stopped_at = time.monotonic()
            self._drain(self._shutdown_deadline() - CLOSE_RESERVE_S)
            return 0
        except ValueError:
            raise
        except Exception:  # noqa: BLE001 - exit non-zero, uncommitted work is redone by the next worker
            log.exception("worker failed; exiting without committing the batch in flight")
            return 1
        finally:
            self._running = False
            self.metrics.ready.set(0)
            self._close(max(self._shutdown_deadline(), time.monotonic() + 1.0))

    def _step(self) -> bool:
        """One turn of the loop. Returns False when the worker must exit."""
        s = self.settings
        self._finish_inflight()
        self._maybe_retry()
        if not self._poll():
            return False
        self._init_new_partitions()
        self._maybe_dispatch(s.max_batch_wait_ms / 1000)
        self._update_metrics()
        return True

    def _buffered(self) -> int:
        held = sum(it.size for it in self._pending)
        if self._inflight_batch is not None:
            held += self._inflight_batch.size
        return held

    def _poll(self) -> bool:
        """Poll once (paused when there is no room), queue the records for decoding."""
        s = self.settings
        with self._lock:
            room = s.max_batch_size - len(self._pending)
            full = room <= 0 or self._buffered() >= s.max_buffered_bytes or self._circuit_since is not None
            opened = self._batch_opened
        self._set_paused(full)
        if opened is not None and not full:
            timeout_ms = max(0, min(IDLE_POLL_MS, int((opened + s.max_batch_wait_ms / 1000 - time.monotonic()) * 1000)))
        else:
            timeout_ms = IDLE_POLL_MS if self._inflight is None else 20
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max(1, room))
        except Exception as e:  # noqa: BLE001 - transient broker trouble unless it keeps being a fatal kind
            self.metrics.broker_errors.labels(operation="poll").inc()
            self._poll_errors += 1
            if kafka_errors.is_a(e, kafka_errors.FATAL_POLL) and self._poll_errors >= 3:
                log.error("poll keeps failing with %s: %s; exiting so that it is seen", type(e).__name__, e)
                return False
            log.warning("poll failed: %s: %s", type(e).__name__, e)
            self._stop.wait(min(2.0, s.retry_backoff_ms / 1000 * self._poll_errors))
            return True
        self._poll_errors = 0
        self.metrics.last_poll.set(time.time())
        n = 0
        with self._lock:
            for tp, records in polled.items():
                st = self.checkpoint.state((tp.topic, tp.partition))
                if st is None:  # revoked while this poll returned: not ours to process
                    continue
                for r in records:
                    rec = to_input_record(r)
                    st.polled(rec.offset)
                    self._pending.append(_Item(rec, self._decode_pool.submit(self.handler.prepare, rec), st))
                    n += 1
                self.metrics.records_consumed.labels(topic=tp.topic).inc(len(records))
            if self._pending and self._batch_opened is None:
                self._batch_opened = time.monotonic()
        self.consumed += n
        return True

    def _set_paused(self, paused: bool) -> None:
        """Pause every assigned partition (or resume them): idempotent, so partitions assigned since the last
        turn get the same treatment."""
        try:
            if paused:
                self.consumer.pause(*self.consumer.assignment())
            elif self.consumer.paused():
                self.consumer.resume(*self.consumer.paused())
        except Exception as e:  # noqa: BLE001 - a rebalance in between; tried again next turn
            log.debug("pause/resume: %s", e)

    def _maybe_dispatch(self, wait_s: float) -> None:
        if self._inflight is not None or self._retry is not None or self._circuit_since is not None:
            return
        with self._lock:
            if not self._pending or self._batch_opened is None:
                return
            full = len(self._pending) >= self.settings.max_batch_size
            if not full and time.monotonic() - self._batch_opened < wait_s:
                return
            batch = _Batch(self._pending)
            self._pending, self._batch_opened = [], None
        self._submit(batch)

    def _submit(self, batch: _Batch) -> None:
        self._inflight_batch = batch
        self._inflight = self._infer_pool.submit(self._process, batch)

    # ------------------------------------------------------------------ inference thread
    def _process(self, batch: _Batch) -> _Batch:
        """Score and deliver a batch; returns once every output is acknowledged (see ``service.delivery``)."""
        items = [it.future.result() for it in batch.items]
        outputs = self.handler.score(items)
        batch.outputs = self.delivery.deliver(outputs)
        self._flushes += 1
        self._fault_after_flush()
        return batch

    def _fault_after_flush(self) -> None:
        fault = self.settings.fault_injection
        if fault and fault.startswith("exit_after_flush:") and self._flushes == int(fault.split(":")[1]):
            log.warning("fault injection: exiting after flush #%d, before its commit", self._flushes)
            logging.shutdown()
            os._exit(137)

    # ------------------------------------------------------------------ back on the consumer thread
    def _finish_inflight(self, wait_s: float = 0.0) -> None:
        fut = self._inflight
        if fut is None:
            return
        if not fut.done():
            if wait_s <= 0:
                return
            concurrent.futures.wait([fut], timeout=wait_s)
            if not fut.done():
                return
        batch = self._inflight_batch
        assert batch is not None
        self._inflight, self._inflight_batch = None, None
        try:
            fut.result()
        except Aborted as e:
            log.warning("batch of %d abandoned uncommitted: %s", len(batch.items), e)
            self.metrics.records_abandoned.labels(reason="produce_failed").inc(len(batch.items))
            return
        except Exception as e:  # noqa: BLE001 - ModelError, or a surprise: keep the batch, retry it
            self._failed(batch, e)
            return
        self._succeeded(batch)

    def _succeeded(self, batch: _Batch) -> None:
        if self._circuit_since is not None:
            log.warning("the model answers again: circuit closed, consuming again")
        self._failures, self._circuit_since = 0, None
        self.metrics.circuit_open.set(0)
        self._set_ready()
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
        with self._lock:
            for it in batch.items:
                it.state.finished(it.record.offset)
            offsets = self.checkpoint.to_commit()
        self._commit(offsets)

    def _failed(self, batch: _Batch, e: BaseException) -> None:
        """Keep a batch the model (or something unforeseen) failed on; retry it after a back-off."""
        self._failures += 1
        s = self.settings
        if self._failures >= s.circuit_breaker_threshold:
            if self._circuit_since is None:
                self._circuit_since = time.monotonic()
                self.metrics.circuit_open.set(1)
                self._set_ready()
                log.error(
                    "%d batches in a row failed (%s); circuit open: consumption stopped until the model answers",
                    self._failures,
                    e,
                )
            k = self._failures - s.circuit_breaker_threshold
            delay = min(s.circuit_breaker_reset_s * (2**k), 10 * s.circuit_breaker_reset_s)
        else:
            delay = min(s.retry_backoff_max_ms, s.retry_backoff_ms * (2 ** (self._failures - 1))) / 1000
        if isinstance(e, ModelError):
            log.warning("the model failed on a batch of %d (%s); retrying it in %.1fs", len(batch.items), e, delay)
        else:
            log.error("batch of %d failed unexpectedly; retrying it in %.1fs", len(batch.items), delay, exc_info=e)
        self._retry = (batch, time.monotonic() + delay)

    def _maybe_retry(self) -> None:
        if self._retry is None or self._inflight is not None:
            return
        batch, at = self._retry
        if time.monotonic() >= at:
            self._retry = None
            self._submit(batch)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (already safe); a failure is logged and left to the next commit."""
        from kafka import TopicPartition as KafkaTP
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        t0 = time.perf_counter()
        payload = {KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        timeout_s = self.settings.session_timeout_ms / 1000
        if self._stopped_at is not None:  # draining: the commit must leave time to close within the bound
            timeout_s = min(timeout_s, max(0.5, self._shutdown_deadline() - CLOSE_RESERVE_S - time.monotonic()))
        timeout_ms = int(1000 * timeout_s)
        try:
            self.consumer.commit(payload, timeout_ms=max(1, timeout_ms))
        except Exception as e:  # noqa: BLE001 - a rebalance or the coordinator away: the next commit covers it
            self.metrics.offset_commits.labels(outcome="failed").inc()
            self.metrics.broker_errors.labels(operation="commit").inc()
            log.warning("commit of %s failed: %s: %s", offsets, type(e).__name__, e)
            return
        self.metrics.offset_commits.labels(outcome="ok").inc()
        self.metrics.commit_duration.observe(time.perf_counter() - t0)
        now = time.time()
        with self._lock:
            self.checkpoint.committed(offsets)
        for t, p in offsets:
            self.metrics.last_commit.labels(topic=t, partition=str(p)).set(now)

    def _init_new_partitions(self) -> None:
        """For newly assigned partitions: the group's committed offset (for lag) and the commit clock."""
        from kafka import TopicPartition as KafkaTP

        with self._lock:
            new, self._new_partitions = self._new_partitions, []
        now = time.time()
        for tp in new:
            self.metrics.last_commit.labels(topic=tp[0], partition=str(tp[1])).set(now)
            try:
                committed = self.consumer.committed(KafkaTP(*tp), timeout_ms=2000)
            except Exception as e:  # noqa: BLE001 - lag waits for our first commit then
                log.debug("committed offset of %s: %s", tp, e)
                continue
            with self._lock:
                st = self.checkpoint.state(tp)
                if st is not None and st.committed is None and committed is not None:
                    st.committed = int(committed)

    def _update_metrics(self, every_s: float = 1.0) -> None:
        from kafka import TopicPartition as KafkaTP

        now = time.monotonic()
        if now - self._last_metrics < every_s:
            return
        self._last_metrics = now
        with self._lock:
            states = list(self.checkpoint.owned.values())
            self.metrics.records_pending.set(len(self._pending))
            self.metrics.records_in_flight.set(0 if self._inflight_batch is None else len(self._inflight_batch.items))
            self.metrics.buffered_bytes.set(self._buffered())
        self._commit_idle(states)
        for st in states:
            try:
                hw = self.consumer.highwater(KafkaTP(*st.tp))
            except Exception:  # noqa: BLE001 - revoked meanwhile
                continue
            base = st.committed if st.committed is not None else st.commit_point()
            if hw is not None and base is not None:
                self.metrics.set_lag(st.tp[0], st.tp[1], hw - base)
        if now - self._last_topic_check >= 30.0:
            self._last_topic_check = now
            try:
                parts = self.consumer.partitions_for_topic(self.settings.input_topic)
                if parts:
                    self.metrics.topic_partitions.labels(topic=self.settings.input_topic).set(len(parts))
            except Exception as e:  # noqa: BLE001 - metadata not there yet
                log.debug("partitions of %s: %s", self.settings.input_topic, e)

    def _commit_idle(self, states: list[PartitionState]) -> None:
        """Commit the position of partitions with nothing outstanding (past control records)."""
        from kafka import TopicPartition as KafkaTP

        for st in states:
            if st.outstanding or st.resume_at is not None:
                continue
            try:
                pos = self.consumer.position(KafkaTP(*st.tp), timeout_ms=100)
            except Exception:  # noqa: BLE001 - revoked meanwhile, or no position yet
                continue
            if pos is not None:
                with self._lock:
                    if self.checkpoint.state(st.tp) is st:
                        st.caught_up(int(pos))
        with self._lock:
            offsets = self.checkpoint.to_commit()
        self._commit(offsets)

    # ------------------------------------------------------------------ shutdown
    def _drain(self, deadline: float) -> None:
        """Finish the batch in flight and commit it, all before ``deadline``; leave the rest uncommitted."""
        if self._inflight is not None:
            log.info("draining: finishing the batch in flight")
            self._finish_inflight(wait_s=max(0.0, deadline - time.monotonic() - 1.0))
            if self._inflight is not None:
                log.warning("batch in flight not delivered before the shutdown deadline; exiting without committing it")
                self._abort.set()
                self.metrics.records_abandoned.labels(reason="produce_failed").inc(
                    0 if self._inflight_batch is None else len(self._inflight_batch.items)
                )
        with self._lock:
            pending, self._pending = self._pending, []
        if self._retry is not None:
            pending += self._retry[0].items
            self._retry = None
        if pending:
            self.metrics.records_abandoned.labels(reason="shutdown").inc(len(pending))
            for it in pending:
                it.future.cancel()
            log.info("left %d records not yet delivered uncommitted (they will be read again)", len(pending))

    def _close(self, deadline: float) -> None:
        self._abort.set()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=int(max(0.0, deadline - time.monotonic()) * 1000))
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("closing the consumer: %s", e)
            self.consumer = None
        self.delivery.close(deadline - time.monotonic())
        log.info(
            "worker stopped: %d records consumed, %d results and dead letters produced", self.consumed, self.produced
        )


if __name__ == "__main__":
    import sys

    from service.serve import main

    sys.exit(main())
