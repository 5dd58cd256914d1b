"""The batch handler: input records in, result and dead-letter records out. Knows nothing of Kafka.

``Handler.prepare`` turns one input record into a preprocessed model input or a rejection (it runs in the
worker's decode pool); ``Handler.score`` runs the model on the prepared part of a batch and builds one
output record per input record, in input order. Every input ends as exactly one result or one dead letter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from dangerclip.card import ModelCard
from dangerclip.preprocess import ImageError, decode_image, preprocess
from service.fetch import FetchError, UriFetcher
from service.messages import (
    CONTENT_TYPE_HEADER,
    DLQ_REASON_HEADER,
    ENVELOPE_CONTENT_TYPES,
    RESULT_SCHEMA,
    DangerMap,
    DeadLetter,
    HeaderValue,
    ImageEnvelope,
    ImageInfo,
    MapPeak,
    ModelRef,
    ScoreResult,
    Source,
    Timings,
    b64,
)
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes | None]]


class Scorer(Protocol):
    """What the handler needs from a model (``dangerclip.scorer.DangerScorer`` is one)."""

    card: ModelCard
    thresholds: np.ndarray
    sha256: str
    provider: str

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class InputRecord:
    """An input record as the transport hands it over."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass
class OutputRecord:
    """A record to produce: a result or a dead letter for exactly one input record.

    ``partition`` is the input's partition: the transport may keep results on the same partition number so
    that their order matches the input's.
    """

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    kind: str  # "result" | "dead_letter"
    id: str | None
    source: InputRecord
    reason: str | None = None
    flagged: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """A record whose image decoded: ready for the model."""

    record: InputRecord
    id: str
    pixels: np.ndarray  # [3, S, S] float32
    image: ImageInfo
    metadata: dict[str, Any]
    decode_s: float
    queue_s: float | None


@dataclass
class Rejected:
    """A record that will go to the dead-letter topic."""

    record: InputRecord
    id: str | None
    reason: str
    message: str


class ModelError(RuntimeError):
    """The model failed on every record of a batch: the model, not the input, is broken."""


def header(headers: Headers, name: str) -> bytes | None:
    """The last value of header ``name`` (case-insensitive), or None."""
    found = None
    for k, v in headers:
        if k.lower() == name:
            found = v
    return found


def is_envelope(headers: Headers) -> bool:
    """Whether the record's ``content-type`` says it is a JSON envelope."""
    ct = header(headers, CONTENT_TYPE_HEADER)
    if not ct:
        return False
    return ct.decode("latin-1").split(";")[0].strip().lower() in ENVELOPE_CONTENT_TYPES


def default_id(rec: InputRecord) -> str:
    """The content id of a raw record: its key as UTF-8, else ``topic/partition/offset``."""
    if rec.key:
        return rec.key.decode("utf-8", errors="replace")
    return f"{rec.topic}/{rec.partition}/{rec.offset}"


class Handler:
    """Turns batches of input records into result and dead-letter records.

    Args:
        scorer: the model.
        settings: the worker's settings (topics, limits, map detail, uri rules).
        metrics: where to record decode/inference timings and scores; None records nothing.
        fetcher: for envelopes with ``uri``; default built from ``settings``.
        clock: wall clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        scorer: Scorer,
        settings: Settings,
        metrics: Metrics | None = None,
        fetcher: UriFetcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scorer = scorer
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.fetcher = fetcher or UriFetcher(
            settings.uri_fetch_enabled,
            settings.uri_allowed_hosts,
            settings.uri_max_bytes,
            settings.uri_timeout_s,
        )
        card = scorer.card
        self.categories = list(card.prompts)
        # float32 in the scorer; rounded so the result says 0.9, not 0.8999999761581421
        self.thresholds = {c: round(float(t), 6) for c, t in zip(self.categories, scorer.thresholds, strict=True)}
        self.model_ref = ModelRef(
            name=card.name, version=card.version, sha256=scorer.sha256, trained=card.trained
        )

    # ------------------------------------------------------------------ stage 1: decode (in the pool)
    def prepare(self, rec: InputRecord) -> Prepared | Rejected:
        """Decode and preprocess one record. Never raises for bad input: returns a ``Rejected`` instead."""
        taken = self.clock()
        t0 = time.perf_counter()
        queue_s = None if rec.timestamp_ms is None else max(0.0, taken - rec.timestamp_ms / 1000.0)
        if self.metrics is not None:
            self.metrics.input_size.observe(len(rec.value or b""))
            if queue_s is not None:
                self.metrics.queue_duration.observe(queue_s)
        try:
            rid, data, metadata = self._unwrap(rec)
        except _Reject as r:
            return Rejected(rec, r.id, r.reason, r.message)
        try:
            img = decode_image(data, max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_bytes)
            width, height = img.size
            fmt = getattr(img, "format", None)
            pixels = preprocess(img, self.scorer.card.preprocess)
        except ImageError as e:
            return Rejected(rec, rid, e.reason, str(e))
        except Exception as e:  # noqa: BLE001 - any other failure on this input is this input's fault
            return Rejected(rec, rid, "decode_error", f"{type(e).__name__}: {e}")
        decode_s = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.decode_duration.observe(decode_s)
        info = ImageInfo(width=width, height=height, format=fmt, bytes=len(data))
        return Prepared(rec, rid, pixels, info, metadata, decode_s, queue_s)

    def _unwrap(self, rec: InputRecord) -> tuple[str, bytes, dict[str, Any]]:
        """Record → (id, encoded image bytes, metadata), or ``_Reject``."""
        value = rec.value
        max_bytes = self.settings.max_bytes
        if value is None:
            raise _Reject(default_id(rec), "not_an_image", "record value is null (tombstone)")
        if not is_envelope(rec.headers):
            if len(value) > max_bytes:
                raise _Reject(
                    default_id(rec), "too_large", f"record is {len(value)} bytes, limit is {max_bytes}"
                )
            return default_id(rec), value, {}
        # The envelope carries base64 (4/3 larger) plus JSON around it.
        if len(value) > max_bytes * 4 // 3 + 64 * 1024:
            raise _Reject(
                default_id(rec), "too_large", f"envelope is {len(value)} bytes, limit is {max_bytes}"
            )
        try:
            doc = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Reject(default_id(rec), "bad_envelope", f"envelope is not JSON: {e}") from None
        try:
            env = ImageEnvelope.model_validate(doc)
        except ValidationError as e:
            rid = doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None
            errors = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'envelope'}: {err['msg']}" for err in e.errors()
            )
            raise _Reject(rid or default_id(rec), "bad_envelope", f"invalid envelope: {errors}") from None
        if env.image_b64 is not None:
            if len(env.image_b64) > max_bytes * 4 // 3 + 4:
                raise _Reject(env.id, "too_large", f"image_b64 decodes to more than {max_bytes} bytes")
            try:
                data = env.image_bytes()
            except (binascii.Error, ValueError) as e:
                raise _Reject(env.id, "bad_base64", f"image_b64 is not valid base64: {e}") from None
            return env.id, data, env.metadata
        assert env.uri is not None
        try:
            data = self.fetcher.fetch(env.uri)
        except FetchError as e:
            raise _Reject(env.id, e.reason, str(e)) from None
        return env.id, data, env.metadata

    # ------------------------------------------------------------------ stage 2: model + messages
    def score(self, items: Sequence[Prepared | Rejected]) -> list[OutputRecord]:
        """Score the prepared items as one batch; one output record per item, in order.

        Raises:
            ModelError: when the model fails on every record of a batch of two or more (the model is
                broken, the batch must not be dead-lettered).
        """
        good = [it for it in items if isinstance(it, Prepared)]
        scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        failed: dict[int, str] = {}
        inference_s = 0.0
        if good:
            batch = np.stack([p.pixels for p in good])
            t0 = time.perf_counter()
            try:
                scores, maps = self.scorer.predict(batch)
                inference_s = time.perf_counter() - t0
                for i, p in enumerate(good):
                    scored[id(p)] = (scores[i], maps[i])
            except Exception as e:  # noqa: BLE001 - find the record that broke the batch, if one did
                log.warning("batch of %d failed in the model (%s); scoring one by one", len(good), e)
                scored, failed = self._score_singly(good)
                inference_s = time.perf_counter() - t0
                if len(good) > 1 and not scored:
                    raise ModelError(f"model failed on all {len(good)} records: {e}") from e
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(good))
                self.metrics.inference_duration.observe(inference_s)
        now_ms = int(self.clock() * 1000)
        out = []
        for it in items:
            if isinstance(it, Rejected):
                out.append(self.dead_letter(it, now_ms))
            elif id(it) in failed:
                out.append(
                    self.dead_letter(Rejected(it.record, it.id, "inference_error", failed[id(it)]), now_ms)
                )
            else:
                s, m = scored[id(it)]
                out.append(self._result(it, s, m, inference_s, len(good), now_ms))
        return out

    def _score_singly(
        self, good: Sequence[Prepared]
    ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, str]]:
        scored, failed = {}, {}
        for p in good:
            try:
                s, m = self.scorer.predict(p.pixels[None])
                scored[id(p)] = (s[0], m[0])
            except Exception as e:  # noqa: BLE001 - this record's failure, recorded on its dead letter
                failed[id(p)] = f"model failed on this record: {type(e).__name__}: {e}"
        return scored, failed

    def handle(self, records: Sequence[InputRecord], pool: Executor | None = None) -> list[OutputRecord]:
        """Prepare (in ``pool`` when given) and score a batch: the whole handler in one call."""
        if pool is None:
            items = [self.prepare(r) for r in records]
        else:
            items = list(pool.map(self.prepare, records))
        return self.score(items)

    # ------------------------------------------------------------------ message building
    def _result(
        self,
        p: Prepared,
        scores: np.ndarray,
        maps: np.ndarray,
        inference_s: float,
        batch_size: int,
        now_ms: int,
    ) -> OutputRecord:
        cats = self.categories
        score_d = {c: round(float(scores[j]), 6) for j, c in enumerate(cats)}
        flagged = {c: bool(scores[j] >= self.thresholds[c]) for j, c in enumerate(cats)}
        if self.metrics is not None:
            for c in cats:
                self.metrics.score.labels(category=c).observe(score_d[c])
        danger_map = None if self.settings.danger_map == "none" else self._map(maps)
        rec = p.record
        result = ScoreResult(
            id=p.id,
            model=self.model_ref,
            scores=score_d,
            flagged=flagged,
            any_flagged=any(flagged.values()),
            thresholds=self.thresholds,
            danger_map=danger_map,
            image=p.image,
            timings=Timings(
                queue_s=None if p.queue_s is None else round(p.queue_s, 6),
                decode_s=round(p.decode_s, 6),
                inference_s=round(inference_s, 6),
                batch_size=batch_size,
            ),
            source=Source(
                topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp_ms
            ),
            metadata=p.metadata,
            scored_at_ms=now_ms,
        )
        headers: Headers = [(k, v) for k, v in rec.headers if k.lower() != CONTENT_TYPE_HEADER]
        headers += [(CONTENT_TYPE_HEADER, b"application/json"), ("dangerclip-schema", RESULT_SCHEMA.encode())]
        return OutputRecord(
            topic=self.settings.output_topic,
            key=rec.key,
            value=result.model_dump_json(by_alias=True).encode(),
            headers=headers,
            kind="result",
            id=p.id,
            source=rec,
            flagged=[c for c, f in flagged.items() if f],
        )

    def _map(self, maps: np.ndarray) -> DangerMap:
        """``[k, h, w]`` probabilities → summary (+ uint8 grid)."""
        summary = {}
        for j, c in enumerate(self.categories):
            m = maps[j]
            r, col = np.unravel_index(int(np.argmax(m)), m.shape)
            summary[c] = MapPeak(
                peak=round(float(m[r, col]), 4),
                peak_at=[int(r), int(col)],
                area=round(float((m >= 0.5).mean()), 4),
            )
        data = None
        if self.settings.danger_map == "grid":
            q = np.clip(np.rint(np.asarray(maps, np.float32) * 255.0), 0, 255).astype(np.uint8)
            data = base64.b64encode(q.tobytes()).decode("ascii")
        return DangerMap(
            categories=self.categories,
            grid=[int(maps.shape[-2]), int(maps.shape[-1])],
            summary=summary,
            data=data,
        )

    def dead_letter(self, r: Rejected, now_ms: int | None = None) -> OutputRecord:
        """The dead-letter record for a rejected input: original bytes and headers, reason, message."""
        rec = r.record
        omit = rec.value is not None and len(rec.value) > self.settings.dead_letter_max_value_bytes
        doc = DeadLetter(
            id=r.id,
            reason=r.reason,  # type: ignore[arg-type]
            message=r.message[:2000],
            source=Source(
                topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp_ms
            ),
            key_b64=b64(rec.key),
            value_b64=None if omit else b64(rec.value),
            value_size=None if rec.value is None else len(rec.value),
            value_sha256=None if rec.value is None else hashlib.sha256(rec.value).hexdigest(),
            value_omitted=omit,
            headers=[HeaderValue(key=k, value_b64=b64(v)) for k, v in rec.headers],
            failed_at_ms=int(self.clock() * 1000) if now_ms is None else now_ms,
        )
        log.info(
            "dead letter %s/%d@%d id=%s reason=%s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            r.id,
            r.reason,
            r.message[:200],
        )
        return OutputRecord(
            topic=self.settings.dead_letter_topic,
            key=rec.key,
            value=doc.model_dump_json(by_alias=True).encode(),
            headers=list(rec.headers) + [(DLQ_REASON_HEADER, r.reason.encode())],
            kind="dead_letter",
            id=r.id,
            source=rec,
            reason=r.reason,
        )

    def slim_dead_letter(self, o: OutputRecord) -> OutputRecord:
        """The same dead letter without the original value (for one the broker refused as too large)."""
        doc = DeadLetter.model_validate_json(o.value)
        doc.value_b64 = None
        doc.value_omitted = True
        o.value = doc.model_dump_json(by_alias=True).encode()
        return o


class _Reject(Exception):
    def __init__(self, rid: str | None, reason: str, message: str) -> None:
        super().__init__(message)
        self.id = rid
        self.reason = reason
        self.message = message
