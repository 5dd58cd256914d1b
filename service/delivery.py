"""Producing a batch's outputs until every one is acknowledged, or terminally replaced.

The contract ``Delivery.deliver`` keeps:

- every output is acknowledged by the broker (``acks=all``) before it returns; transient errors (broker
  away, leader moves, time-outs) are retried with back-off, and the producer is recreated after repeated
  failures (an idempotent producer whose cluster lost its state stays fenced for good otherwise);
- an error that retrying cannot fix for one record is terminal for that record, not for the batch: a result
  the broker refuses as too large becomes its ``result_too_large`` dead letter, a dead letter so refused is
  slimmed to half the size, then again; one record never stops its partition;
- on a failure the failed record and every later record of the batch are sent again, in order: the last
  copy of each output comes in input order (duplicates are possible, which at-least-once allows);
- ``abort`` (set at the shutdown deadline) ends the retries: the batch stays uncommitted and its records
  are read again by the partition's next owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from service import kafka_errors
from service.handler import Handler, OutputRecord
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
receipts = logging.getLogger(__name__ + ".receipts")
"""At DEBUG, one line per delivered batch: each output's input coordinate and where the broker acknowledged it
(``DANGERCLIP_DEBUG=service.delivery.receipts``). An audit trail, and how the chaos tests tell a broker that lost
acknowledged records from a worker that lost inputs."""


MIN_DEAD_LETTER_BYTES = 4096
"""Dead letters are not slimmed below this (a minimal one is well under 2 KiB)."""


class Aborted(RuntimeError):
    """Delivery was aborted (shutdown deadline) before every output was acknowledged."""


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


def _receipt(o: OutputRecord, fut: Any) -> str:
    """``in-topic/0@12>out-topic/3@40``: an output's input coordinate and where the broker put it."""
    src = o.source
    meta = getattr(fut, "value", None)
    where = f"{meta.topic}/{meta.partition}@{meta.offset}" if meta is not None else "?"
    return f"{src.topic}/{src.partition}@{src.offset}>{where}"


def is_too_large(err: BaseException | None) -> bool:
    return kafka_errors.is_a(err, kafka_errors.TOO_LARGE)


class Delivery:
    """Sends outputs with one producer, under the rules above.

    Args:
        settings: the worker's settings (timeouts, back-off, ``max_message_bytes``, partitioning).
        handler: builds replacement dead letters.
        metrics: broker errors and produce durations.
        producer_factory: makes a kafka-python ``KafkaProducer`` (called again to recreate it).
        abort: set when retries must stop.
    """

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        metrics: Metrics,
        producer_factory: Callable[[], Any],
        abort: threading.Event,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.producer_factory = producer_factory
        self.abort = abort
        self.producer: Any = None
        self._out_partitions: int | None = None

    def connect(self) -> None:
        if self.producer is None:
            self.producer = self.producer_factory()

    def deliver(self, outputs: list[OutputRecord]) -> list[OutputRecord]:
        """Send ``outputs`` and wait until all are acknowledged. Returns the outputs as delivered (a refused
        record replaced by its dead letter).

        Raises:
            Aborted: ``abort`` was set first.
        """
        s = self.settings
        backoff = Backoff(s.retry_backoff_ms / 1000, s.retry_backoff_max_ms / 1000)
        out = list(outputs)
        start = 0  # everything before ``start`` is acknowledged
        t0 = time.perf_counter()
        attempts = 0
        acked: dict[int, Any] = {}  # index -> the future of its last acknowledged copy (for the receipts)
        while start < len(out):
            if self.abort.is_set():
                raise Aborted(f"{len(out) - start} outputs not acknowledged")
            futures: list[Any] = []
            first_bad: int | None = None
            for i in range(start, len(out)):
                try:
                    futures.append(self._send(out[i]))
                except Exception as e:  # noqa: BLE001 - sorted out below: terminal for the record, or retry
                    if is_too_large(e):
                        out[i] = self._replace(out[i], str(e))
                        futures.append(self._send_or_none(out[i]))
                    else:
                        log.warning("send failed (%s); will retry", e)
                        futures.append(None)
            try:
                self.producer.flush(timeout=s.produce_timeout_s)
            except Exception as e:  # noqa: BLE001 - a flush time-out: the unacknowledged ones are retried
                log.warning("flush failed (%s); will retry", e)
            for j, fut in enumerate(futures):
                i = start + j
                if fut is not None and fut.is_done and fut.succeeded():
                    acked[i] = fut
                    continue
                err = fut.exception if fut is not None and fut.is_done else None
                if is_too_large(err):
                    out[i] = self._replace(out[i], str(err))
                if first_bad is None:
                    first_bad = i
            if first_bad is None:
                break
            self.metrics.broker_errors.labels(operation="produce").inc()
            self._out_partitions = None  # topic metadata may have changed (broker restart)
            attempts += 1
            delay = backoff.next()
            log.warning(
                "%d of %d outputs not acknowledged; resending from #%d in %.1fs",
                len(out) - first_bad,
                len(out),
                first_bad,
                delay,
            )
            start = first_bad
            if self.abort.wait(delay):
                raise Aborted(f"{len(out) - start} outputs not acknowledged")
            if attempts % 3 == 0:
                self.reset()
        self.metrics.produce_duration.observe(time.perf_counter() - t0)
        if receipts.isEnabledFor(logging.DEBUG):
            receipts.debug("acknowledged %s", " ".join(_receipt(o, acked.get(i)) for i, o in enumerate(out)))
        return out

    def _send(self, o: OutputRecord) -> Any:
        return self.producer.send(o.topic, value=o.value, key=o.key, headers=o.headers, partition=self._partition(o))

    def _send_or_none(self, o: OutputRecord) -> Any:
        try:
            return self._send(o)
        except Exception as e:  # noqa: BLE001 - retried on the next round
            log.warning("send failed (%s); will retry", e)
            return None

    def _replace(self, o: OutputRecord, why: str) -> OutputRecord:
        """The terminal replacement of an output the broker will never take as it is."""
        src = o.source
        where = f"{src.topic}/{src.partition}@{src.offset}"
        if o.kind == "result":
            log.warning("result of %s refused as too large (%s): sending a result_too_large dead letter", where, why)
            return self.handler.demote_result(o, f"the broker refused the result: {why}")
        limit = max(MIN_DEAD_LETTER_BYTES, len(o.value) // 2)
        log.warning("dead letter of %s refused as too large (%s): slimming it to %d bytes", where, why, limit)
        return self.handler.shrink_dead_letter(o, limit)

    def _partition(self, o: OutputRecord) -> int | None:
        if o.kind != "result" or self.settings.output_partitioning != "same":
            return None
        if self._out_partitions is None:
            parts = self.producer.partitions_for(self.settings.output_topic)
            self._out_partitions = len(parts) if parts else None
        if not self._out_partitions:
            return None
        return o.source.partition % self._out_partitions

    def reset(self) -> None:
        """Recreate the producer (a fenced idempotent producer gets a new producer id)."""
        log.warning("recreating the producer")
        old, self.producer = self.producer, None
        try:
            old.close(timeout=0)
        except Exception as e:  # noqa: BLE001 - the old producer is broken; closing is best effort
            log.debug("closing the old producer: %s", e)
        try:
            self.producer = self.producer_factory()
        except Exception as e:  # noqa: BLE001 - broker still away: keep the old one, retry later
            log.warning("cannot create a producer yet: %s", e)
            self.producer = old

    def close(self, timeout_s: float) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=max(0.0, timeout_s))
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("closing the producer: %s", e)
            self.producer = None
