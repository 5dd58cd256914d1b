"""Every Prometheus metric the worker exports, in one place.

Names follow Prometheus conventions: one ``dangerclip_`` prefix, base units (seconds, bytes), ``_total`` on
counters, and low-cardinality labels only (``reason`` is one of the fixed dead-letter codes, ``category``
one of the model's few categories, ``partition`` bounded by the input topic's partition count).

The registry is injectable so tests (and two workers in one process) never collide in the global one.

Metric names (the Helm chart and the Grafana dashboards use exactly these), ``type {labels}: meaning``:

Counters
    - ``dangerclip_records_consumed_total`` {topic}: input records taken from Kafka.
    - ``dangerclip_results_produced_total`` {topic}: results written to the output topic (after flush).
    - ``dangerclip_dead_letters_total`` {topic, reason}: dead-letter records written, by reason code.
    - ``dangerclip_flagged_total`` {category}: results flagged, per category.
    - ``dangerclip_records_abandoned_total`` {reason}: in-flight records dropped without committing
      (``revoked``: not yet in a batch when their partition moved; ``shutdown``: not yet in a batch at
      shutdown; ``produce_failed``: their batch was not acknowledged before the shutdown deadline). Kafka
      delivers them again.
    - ``dangerclip_offset_commits_total`` {outcome}: offset commits, ``ok`` or ``failed``.
    - ``dangerclip_broker_errors_total`` {operation}: broker errors (``poll``, ``produce``, ``commit``,
      ``connect``).
    - ``dangerclip_rebalances_total`` {event}: partitions ``assigned`` / ``revoked``.
    - ``dangerclip_identified_total`` {confidence, look_alike}: flagged images given a firearm type, by
      confidence level (``high``, ``medium``, ``low``) and whether the type is a non-lethal look-alike.
    - ``dangerclip_identification_errors_total``: batches whose identification stage failed (their results go
      out without ``identification``).
    - ``dangerclip_identification_matches_total`` {signal, result}: flagged images searched in the index, by
      signal (``pdq``: the very picture; ``embedding``: the same firearm model) and ``match`` / ``no_match``.

Histograms (base units)
    - ``dangerclip_batch_size_records``: records per scored micro-batch.
    - ``dangerclip_decode_duration_seconds``: decode + preprocess, per record.
    - ``dangerclip_inference_duration_seconds``: model run, per batch.
    - ``dangerclip_produce_duration_seconds``: produce + flush, per batch.
    - ``dangerclip_commit_duration_seconds``: offset commit, per batch.
    - ``dangerclip_queue_duration_seconds``: record timestamp → the worker took it.
    - ``dangerclip_end_to_end_duration_seconds``: record timestamp → its result flushed.
    - ``dangerclip_input_size_bytes``: size of input record values.
    - ``dangerclip_score`` {category}: score distribution (for drift).
    - ``dangerclip_identification_duration_seconds``: the identification stage, per batch of flagged images.

Gauges
    - ``dangerclip_consumer_lag_records`` {topic, partition}: high watermark − committed offset, for every
      assigned partition (records not yet safely done; refreshed while a batch is being scored, too).
    - ``dangerclip_last_commit_timestamp_seconds`` {topic, partition}: Unix time of the partition's last
      offset commit (its assignment time until the first): with lag > 0, a stalled partition.
    - ``dangerclip_last_poll_timestamp_seconds``: Unix time of the last successful poll.
    - ``dangerclip_records_pending``: records polled and not yet in a batch.
    - ``dangerclip_records_in_flight``: records of the batch being scored and produced.
    - ``dangerclip_buffered_bytes``: input bytes held (pending + in flight); capped by ``max_buffered_bytes``.
    - ``dangerclip_topic_partitions`` {topic}: partitions the input topic has (from the client's metadata).
    - ``dangerclip_circuit_open``: 1 while a failing model has stopped consumption.
    - ``dangerclip_assigned_partitions``: partitions this worker owns.
    - ``dangerclip_ready``: 1 when the model is loaded and the consumer has partitions.
    - ``dangerclip_model_info`` {name, version, sha256, provider, mode, trained}: always 1.
    - ``dangerclip_build_info`` {version}: always 1; the dangerclip package version.

``_created`` series are switched off (``disable_created_metrics``): they double the series count and no
dashboard uses them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

PREFIX = "dangerclip_"

RECORDS_CONSUMED = "dangerclip_records_consumed_total"
RESULTS_PRODUCED = "dangerclip_results_produced_total"
DEAD_LETTERS = "dangerclip_dead_letters_total"
FLAGGED = "dangerclip_flagged_total"
RECORDS_ABANDONED = "dangerclip_records_abandoned_total"
OFFSET_COMMITS = "dangerclip_offset_commits_total"
BROKER_ERRORS = "dangerclip_broker_errors_total"
REBALANCES = "dangerclip_rebalances_total"
IDENTIFIED = "dangerclip_identified_total"
IDENTIFICATION_ERRORS = "dangerclip_identification_errors_total"
IDENTIFICATION_MATCHES = "dangerclip_identification_matches_total"
IDENTIFICATION_DURATION = "dangerclip_identification_duration_seconds"
BATCH_SIZE = "dangerclip_batch_size_records"
DECODE_DURATION = "dangerclip_decode_duration_seconds"
INFERENCE_DURATION = "dangerclip_inference_duration_seconds"
PRODUCE_DURATION = "dangerclip_produce_duration_seconds"
COMMIT_DURATION = "dangerclip_commit_duration_seconds"
QUEUE_DURATION = "dangerclip_queue_duration_seconds"
END_TO_END_DURATION = "dangerclip_end_to_end_duration_seconds"
INPUT_SIZE = "dangerclip_input_size_bytes"
SCORE = "dangerclip_score"
CONSUMER_LAG = "dangerclip_consumer_lag_records"
LAST_COMMIT = "dangerclip_last_commit_timestamp_seconds"
LAST_POLL = "dangerclip_last_poll_timestamp_seconds"
RECORDS_PENDING = "dangerclip_records_pending"
RECORDS_IN_FLIGHT = "dangerclip_records_in_flight"
BUFFERED_BYTES = "dangerclip_buffered_bytes"
TOPIC_PARTITIONS = "dangerclip_topic_partitions"
CIRCUIT_OPEN = "dangerclip_circuit_open"
ASSIGNED_PARTITIONS = "dangerclip_assigned_partitions"
READY = "dangerclip_ready"
MODEL_INFO = "dangerclip_model_info"
BUILD_INFO = "dangerclip_build_info"

METRIC_NAMES: tuple[str, ...] = (
    RECORDS_CONSUMED,
    RESULTS_PRODUCED,
    DEAD_LETTERS,
    FLAGGED,
    RECORDS_ABANDONED,
    OFFSET_COMMITS,
    BROKER_ERRORS,
    REBALANCES,
    IDENTIFIED,
    IDENTIFICATION_ERRORS,
    IDENTIFICATION_MATCHES,
    IDENTIFICATION_DURATION,
    BATCH_SIZE,
    DECODE_DURATION,
    INFERENCE_DURATION,
    PRODUCE_DURATION,
    COMMIT_DURATION,
    QUEUE_DURATION,
    END_TO_END_DURATION,
    INPUT_SIZE,
    SCORE,
    CONSUMER_LAG,
    LAST_COMMIT,
    LAST_POLL,
    RECORDS_PENDING,
    RECORDS_IN_FLIGHT,
    BUFFERED_BYTES,
    TOPIC_PARTITIONS,
    CIRCUIT_OPEN,
    ASSIGNED_PARTITIONS,
    READY,
    MODEL_INFO,
    BUILD_INFO,
)
"""Every metric name, as it appears in ``/metrics`` (histograms add ``_bucket``/``_sum``/``_count``)."""

# Latencies from ~1 ms (tiny model on a GPU) to a minute (a slow batch on a busy CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Queue and end-to-end latency include time spent waiting in Kafka, so they reach further.
END_TO_END_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SIZE_BUCKETS = (1e3, 1e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (1.0,)


def _unsuffixed(name: str, suffix: str) -> str:
    # prometheus_client appends _total to counters itself; we keep the full name in the constants above.
    return name[: -len(suffix)] if name.endswith(suffix) else name


class Metrics:
    """The worker's metrics, registered in one registry.

    Args:
        registry: where to register; ``None`` makes a fresh private registry (tests, several workers in one
            process). The worker's HTTP server serves whichever registry its ``Metrics`` holds.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            _unsuffixed(RECORDS_CONSUMED, "_total"), "Input records taken from Kafka.", ["topic"], registry=r
        )
        self.results_produced = Counter(
            _unsuffixed(RESULTS_PRODUCED, "_total"),
            "Results written to the output topic (after flush).",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            _unsuffixed(DEAD_LETTERS, "_total"),
            "Records written to the dead-letter topic, by reason code.",
            ["topic", "reason"],
            registry=r,
        )
        self.flagged = Counter(
            _unsuffixed(FLAGGED, "_total"), "Results flagged, per category.", ["category"], registry=r
        )
        self.records_abandoned = Counter(
            _unsuffixed(RECORDS_ABANDONED, "_total"),
            "In-flight records dropped without committing (Kafka redelivers them), by reason.",
            ["reason"],
            registry=r,
        )
        self.offset_commits = Counter(
            _unsuffixed(OFFSET_COMMITS, "_total"),
            "Offset commits, by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.broker_errors = Counter(
            _unsuffixed(BROKER_ERRORS, "_total"),
            "Errors talking to the broker, by operation.",
            ["operation"],
            registry=r,
        )
        self.rebalances = Counter(
            _unsuffixed(REBALANCES, "_total"),
            "Consumer group rebalance callbacks (assigned, revoked).",
            ["event"],
            registry=r,
        )
        self.batch_size = Histogram(BATCH_SIZE, "Records per scored micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.decode_duration = Histogram(
            DECODE_DURATION, "Decode and preprocess time per record.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            INFERENCE_DURATION, "Model run time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.identification_duration = Histogram(
            IDENTIFICATION_DURATION,
            "Identification stage time per batch of flagged images.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.identified = Counter(
            _unsuffixed(IDENTIFIED, "_total"),
            "Flagged images given a firearm type, by confidence level and look-alike.",
            ["confidence", "look_alike"],
            registry=r,
        )
        self.identification_matches = Counter(
            _unsuffixed(IDENTIFICATION_MATCHES, "_total"),
            "Flagged images searched in the index, by signal (pdq, embedding) and result (match, no_match).",
            ["signal", "result"],
            registry=r,
        )
        self.identification_errors = Counter(
            _unsuffixed(IDENTIFICATION_ERRORS, "_total"),
            "Batches whose identification stage failed (results sent without identification).",
            registry=r,
        )
        self.produce_duration = Histogram(
            PRODUCE_DURATION, "Produce and flush time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.commit_duration = Histogram(
            COMMIT_DURATION, "Offset commit time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            QUEUE_DURATION,
            "Time from the record's timestamp to the worker taking it.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.end_to_end_duration = Histogram(
            END_TO_END_DURATION,
            "Time from the record's timestamp to its result being flushed.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.input_size = Histogram(INPUT_SIZE, "Size of input record values.", buckets=SIZE_BUCKETS, registry=r)
        self.score = Histogram(
            SCORE,
            "Distribution of scores per category (watch it for drift).",
            ["category"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            CONSUMER_LAG,
            "Records between the committed offset and the high watermark, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.last_commit = Gauge(
            LAST_COMMIT,
            "Unix time of the partition's last offset commit (its assignment time until the first).",
            ["topic", "partition"],
            registry=r,
        )
        self.last_poll = Gauge(LAST_POLL, "Unix time of the last successful poll.", registry=r)
        self.records_pending = Gauge(RECORDS_PENDING, "Records polled and not yet in a batch.", registry=r)
        self.records_in_flight = Gauge(RECORDS_IN_FLIGHT, "Records of the batch being scored and produced.", registry=r)
        self.buffered_bytes = Gauge(
            BUFFERED_BYTES, "Input bytes held by the worker (pending and in flight).", registry=r
        )
        self.topic_partitions = Gauge(
            TOPIC_PARTITIONS, "Partitions the input topic has, from the client's metadata.", ["topic"], registry=r
        )
        self.circuit_open = Gauge(CIRCUIT_OPEN, "1 while a failing model has stopped consumption.", registry=r)
        self.assigned_partitions = Gauge(
            ASSIGNED_PARTITIONS, "Input partitions currently assigned to this worker.", registry=r
        )
        self.ready = Gauge(READY, "1 when the model is loaded and the consumer has partitions.", registry=r)
        self.model_info = Gauge(
            MODEL_INFO,
            "The served model (always 1).",
            ["name", "version", "sha256", "provider", "mode", "trained"],
            registry=r,
        )
        self.build_info = Gauge(BUILD_INFO, "The dangerclip package version (always 1).", ["version"], registry=r)
        from dangerclip import __version__

        self.build_info.labels(version=__version__).set(1)

    def set_model(self, *, name: str, version: str, sha256: str, provider: str, mode: str, trained: bool) -> None:
        """Publish the model info metric (one series; replaces any earlier one)."""
        self.model_info.clear()
        self.model_info.labels(
            name=name,
            version=version,
            sha256=sha256,
            provider=provider,
            mode=mode,
            trained=str(trained).lower(),
        ).set(1)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, lag))

    def drop_partition(self, topic: str, partition: int) -> None:
        """Forget a partition's series when it is revoked, so a stale value never lingers."""
        for gauge in (self.consumer_lag, self.last_commit):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass
