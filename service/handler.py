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

from dangerclip.runtime.card import ModelCard
from dangerclip.runtime.heatmap import map_peaks
from dangerclip.runtime.preprocess import ImageError, check_formats, decode_image, preprocess
from service.budget import PixelBudget
from service.fetch import FetchError, UriFetcher
from service.identify import Identifier
from service.messages import (
    CONTENT_TYPE_HEADER,
    DEAD_LETTER_CONTENT_TYPE,
    DEAD_LETTER_SCHEMA,
    DLQ_REASON_HEADER,
    ENVELOPE_CONTENT_TYPES,
    RESERVED_HEADER_PREFIX,
    RESULT_CONTENT_TYPE,
    RESULT_SCHEMA,
    RESULT_SCHEMA_IDENTIFIED,
    SCHEMA_HEADER,
    SOURCE_HEADER,
    DangerMap,
    DeadLetter,
    HeaderValue,
    Identification,
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
    """What the handler needs from a model (``dangerclip.runtime.scorer.DangerScorer`` is one)."""

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
    thumb: Any = None  # a small copy of the decoded image, kept for identification (PIL.Image)


@dataclass
class Rejected:
    """A record that will go to the dead-letter topic."""

    record: InputRecord
    id: str | None
    reason: str
    message: str


class ModelError(RuntimeError):
    """The model failed on every record of a batch and on a blank probe image: the model, not the input, is
    broken. The batch must be kept and retried, not dead-lettered."""


MAX_METADATA_DEPTH = 64
"""Deepest envelope metadata carried to a result: the result's JSON serializer refuses much deeper values."""

DECODE_MIN_SIDE_FACTOR = 2
"""Large images are decoded at reduced scale down to this many times the model's input side, never below."""

RECORD_OVERHEAD_BYTES = 256
"""Bytes a record adds to its key, value and headers in a Kafka request (record batch header, varints),
rounded up: what ``fits`` leaves free under ``max_message_bytes``."""


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of a record's size in a produce request, as the broker's size limit counts it."""
    size = len(key or b"") + len(value or b"") + RECORD_OVERHEAD_BYTES
    return size + sum(len(k.encode("utf-8", "replace")) + len(v or b"") + 8 for k, v in headers)


def source_tag(rec: InputRecord) -> bytes:
    """``topic/partition/offset`` of an input: the dedup key every output carries."""
    return f"{rec.topic}/{rec.partition}/{rec.offset}".encode()


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


def passthrough_headers(headers: Headers, max_bytes: int) -> Headers:
    """The input headers an output carries: none of ``dangerclip-*`` or ``content-type`` (the worker writes
    those), and none at all when together they exceed ``max_bytes`` (an input cannot make its outputs too
    large to produce)."""
    kept = [
        (k, v)
        for k, v in headers
        if not k.lower().startswith(RESERVED_HEADER_PREFIX) and k.lower() != CONTENT_TYPE_HEADER
    ]
    if sum(len(k.encode("utf-8", "replace")) + len(v or b"") for k, v in kept) > max_bytes:
        return []
    return kept


class Handler:
    """Turns batches of input records into result and dead-letter records.

    Args:
        scorer: the model.
        settings: the worker's settings (topics, limits, map detail, uri rules).
        metrics: where to record decode/inference timings and scores; None records nothing.
        fetcher: for envelopes with ``uri``; default built from ``settings``.
        clock: wall clock in seconds (tests pass a fake one).
        identifier: the identification stage for flagged images (``service.identify``); ``None``: off.
    """

    def __init__(
        self,
        scorer: Scorer,
        settings: Settings,
        metrics: Metrics | None = None,
        fetcher: UriFetcher | None = None,
        clock: Callable[[], float] = time.time,
        identifier: Identifier | None = None,
    ) -> None:
        self.scorer = scorer
        self.identifier = identifier
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
        self.formats = check_formats(settings.image_formats)  # a misspelt name must fail at start, not per record
        self.budget = PixelBudget(settings.decode_budget_pixels)
        # Decoding at twice the model's input side changes the preprocessed pixels by a rounding error and
        # spares the memory and time of a full-size decode (JPEG draft, box reduce).
        self.min_side = DECODE_MIN_SIDE_FACTOR * card.preprocess.image_size
        self.categories = list(card.prompts)
        # float32 in the scorer; rounded so the result says 0.9, not 0.8999999761581421
        self.thresholds = {c: round(float(t), 6) for c, t in zip(self.categories, scorer.thresholds, strict=True)}
        self.model_ref = ModelRef(name=card.name, version=card.version, sha256=scorer.sha256, trained=card.trained)

    # ------------------------------------------------------------------ stage 1: decode (in the pool)
    def prepare(self, rec: InputRecord) -> Prepared | Rejected:
        """Decode and preprocess one record. Never raises: bad input, and anything nobody foresaw, returns a
        ``Rejected`` (the latter as ``internal_error``, logged with the record's coordinates)."""
        try:
            return self._prepare(rec)
        except Exception as e:  # noqa: BLE001 - one record's surprise must not stop its partition
            log.exception("internal error preparing %s/%d@%d", rec.topic, rec.partition, rec.offset)
            return Rejected(rec, default_id(rec), "internal_error", f"{type(e).__name__}: {e}"[:2000])

    def _prepare(self, rec: InputRecord) -> Prepared | Rejected:
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
            img = decode_image(
                data,
                max_pixels=self.settings.max_pixels,
                max_bytes=self.settings.max_bytes,
                formats=self.formats,
                min_side=self.min_side,
                reserve=self.budget.reserve,
            )
            width, height = img.info.get("source_size", img.size)  # the upload's size, not a reduced decode's
            fmt = getattr(img, "format", None)
            pixels = preprocess(img, self.scorer.card.preprocess)
            thumb = None if self.identifier is None else self.identifier.thumbnail(img)
        except ImageError as e:
            return Rejected(rec, rid, e.reason, str(e))
        except Exception as e:  # noqa: BLE001 - any other failure on this input is this input's fault
            return Rejected(rec, rid, "decode_error", f"{type(e).__name__}: {e}")
        decode_s = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.decode_duration.observe(decode_s)
        info = ImageInfo(width=width, height=height, format=fmt, bytes=len(data))
        return Prepared(rec, rid, pixels, info, metadata, decode_s, queue_s, thumb)

    def _unwrap(self, rec: InputRecord) -> tuple[str, bytes, dict[str, Any]]:
        """Record → (id, encoded image bytes, metadata), or ``_Reject``."""
        value = rec.value
        max_bytes = self.settings.max_bytes
        if value is None:
            raise _Reject(default_id(rec), "not_an_image", "record value is null (tombstone)")
        if not is_envelope(rec.headers):
            if len(value) > max_bytes:
                raise _Reject(default_id(rec), "too_large", f"record is {len(value)} bytes, limit is {max_bytes}")
            return default_id(rec), value, {}
        # The envelope carries base64 (4/3 larger) plus JSON around it.
        if len(value) > max_bytes * 4 // 3 + 64 * 1024:
            raise _Reject(default_id(rec), "too_large", f"envelope is {len(value)} bytes, limit is {max_bytes}")
        try:
            doc = json.loads(value, parse_constant=_refuse_constant, parse_float=_finite_float)
        except RecursionError:
            raise _Reject(default_id(rec), "bad_envelope", "envelope is nested too deeply") from None
        except ValueError as e:  # not JSON, not UTF-8, or an integer past Python's digit limit
            raise _Reject(default_id(rec), "bad_envelope", f"envelope is not JSON: {str(e)[:300]}") from None
        try:
            env = ImageEnvelope.model_validate(doc)
        except ValidationError as e:
            rid = doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None
            errors = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'envelope'}: {err['msg']}" for err in e.errors()
            )
            raise _Reject(rid or default_id(rec), "bad_envelope", f"invalid envelope: {errors}") from None
        if _depth(env.metadata) > MAX_METADATA_DEPTH:
            raise _Reject(env.id, "bad_envelope", f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if not _encodable(env.id):
            raise _Reject(None, "bad_envelope", "id is not valid Unicode (lone surrogate)")
        try:
            metadata_size = len(json.dumps(env.metadata, ensure_ascii=False).encode("utf-8"))
        except (RecursionError, ValueError) as e:
            raise _Reject(env.id, "bad_envelope", f"metadata cannot be carried: {type(e).__name__}") from None
        if metadata_size > self.settings.max_metadata_bytes:
            raise _Reject(
                env.id,
                "bad_envelope",
                f"metadata is {metadata_size} bytes as JSON, limit is {self.settings.max_metadata_bytes}",
            )
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

        When the batch fails in the model, each record is scored alone: the records the model still fails on
        are dead-lettered (``inference_error``) only if the model answers a blank probe image, so a broken
        model (or GPU) never empties the stream into the dead letters.

        Raises:
            ModelError: the model failed on every record and on the probe. Nothing of the batch is produced.
        """
        good = [it for it in items if isinstance(it, Prepared)]
        scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        failed: dict[int, str] = {}
        inference_s = 0.0
        if good:
            batch = np.stack([p.pixels for p in good])
            t0 = time.perf_counter()
            try:
                scores, maps = self._predict(batch)
                inference_s = time.perf_counter() - t0
                for i, p in enumerate(good):
                    scored[id(p)] = (scores[i], maps[i])
            except Exception as e:  # noqa: BLE001 - find the record that broke the batch, if one did
                log.warning("batch of %d failed in the model (%s); scoring one by one", len(good), e)
                scored, failed = self._score_singly(good)
                inference_s = time.perf_counter() - t0
                if not scored and not self._model_answers(good[0].pixels.shape):
                    raise ModelError(f"model failed on all {len(good)} records and on a blank probe: {e}") from e
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(good))
                self.metrics.inference_duration.observe(inference_s)
        identified = self._identify(good, scored)
        now_ms = int(self.clock() * 1000)
        out = []
        for it in items:
            try:
                if isinstance(it, Rejected):
                    out.append(self.dead_letter(it, now_ms))
                elif id(it) in failed:
                    out.append(self.dead_letter(Rejected(it.record, it.id, "inference_error", failed[id(it)]), now_ms))
                else:
                    s, m = scored[id(it)]
                    out.append(self._result(it, s, m, inference_s, len(good), now_ms, identified.get(id(it))))
            except Exception as e:  # noqa: BLE001 - one record's surprise must not stop its partition
                r = it.record
                log.exception("internal error building the output of %s/%d@%d", r.topic, r.partition, r.offset)
                out.append(self.dead_letter(Rejected(r, it.id, "internal_error", f"{type(e).__name__}: {e}"), now_ms))
        return out

    def _identify(
        self, good: Sequence[Prepared], scored: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> dict[int, Identification]:
        """The identification stage on this batch's flagged images (one call for all of them)."""
        if self.identifier is None:
            return {}
        limits = np.asarray([self.thresholds[c] for c in self.categories], np.float32)
        flagged = [p for p in good if id(p) in scored and bool((scored[id(p)][0] >= limits).any())]
        flagged = [p for p in flagged if p.thumb is not None]
        found = self.identifier.identify([p.thumb for p in flagged])
        return {id(p): ident for p, ident in zip(flagged, found, strict=True) if ident is not None}

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model on ``[B, 3, S, S]``; a score or map that is not a finite probability is a model failure."""
        scores, maps = self.scorer.predict(batch)
        scores, maps = np.asarray(scores), np.asarray(maps)
        if scores.shape[0] != batch.shape[0] or maps.shape[0] != batch.shape[0]:
            raise RuntimeError(f"model returned {scores.shape[0]} scores for {batch.shape[0]} images")
        if not (np.isfinite(scores).all() and np.isfinite(maps).all()):
            raise FloatingPointError("model returned non-finite scores or maps")
        return scores, maps

    def _score_singly(
        self, good: Sequence[Prepared]
    ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, str]]:
        scored, failed = {}, {}
        for p in good:
            try:
                s, m = self._predict(p.pixels[None])
                scored[id(p)] = (s[0], m[0])
            except Exception as e:  # noqa: BLE001 - this record's failure, recorded on its dead letter
                failed[id(p)] = f"model failed on this record: {type(e).__name__}: {e}"
        return scored, failed

    def _model_answers(self, shape: tuple[int, ...]) -> bool:
        """Whether the model scores a blank image: tells a broken model from records that break it."""
        try:
            self._predict(np.zeros((1, *shape), np.float32))
            return True
        except Exception as e:  # noqa: BLE001 - any failure means the model is not usable
            log.error("the model fails on a blank probe image: %s", e)
            return False

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
        identification: Identification | None = None,
    ) -> OutputRecord:
        cats = self.categories
        score_d = {c: round(float(scores[j]), 6) for j, c in enumerate(cats)}
        flagged = {c: bool(scores[j] >= self.thresholds[c]) for j, c in enumerate(cats)}
        if self.metrics is not None:
            for c in cats:
                self.metrics.score.labels(category=c).observe(score_d[c])
        danger_map = None if self.settings.danger_map == "none" else self._map(maps)
        rec = p.record
        schema = RESULT_SCHEMA if identification is None else RESULT_SCHEMA_IDENTIFIED
        result = ScoreResult(
            schema=schema,
            identification=identification,
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
            source=Source(topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp_ms),
            metadata=p.metadata,
            scored_at_ms=now_ms,
        )
        headers = passthrough_headers(rec.headers, self.settings.max_passthrough_header_bytes)
        headers += [
            (CONTENT_TYPE_HEADER, RESULT_CONTENT_TYPE.encode()),
            (SCHEMA_HEADER, schema.encode()),
            (SOURCE_HEADER, source_tag(rec)),
        ]
        # A v1 result is v1 to the byte: the v1.1 field is absent, not null.
        value = result.model_dump_json(by_alias=True, exclude=None if identification else {"identification"}).encode()
        if record_size(rec.key, value, headers) > self.settings.max_message_bytes:
            message = (
                f"result is {len(value)} bytes, over max_message_bytes ({self.settings.max_message_bytes}); "
                f"scores {json.dumps(score_d)}, flagged {sorted(c for c, f in flagged.items() if f)}"
            )
            return self.dead_letter(Rejected(rec, p.id, "result_too_large", message), now_ms)
        return OutputRecord(
            topic=self.settings.output_topic,
            key=rec.key,
            value=value,
            headers=headers,
            kind="result",
            id=p.id,
            source=rec,
            flagged=[c for c, f in flagged.items() if f],
        )

    def _map(self, maps: np.ndarray) -> DangerMap:
        """``[k, h, w]`` probabilities → summary (+ uint8 grid)."""
        summary = {c: MapPeak.model_validate(peak) for c, peak in map_peaks(self.categories, maps).items()}
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
        """The dead-letter record for a rejected input: original bytes and headers, reason, message.

        It always fits ``max_message_bytes``: the original value goes when it is over
        ``dead_letter_max_value_bytes`` or does not fit, then the original headers, then the key.
        """
        rec = r.record
        log.info(
            "dead letter %s/%d@%d id=%s reason=%s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            r.id,
            r.reason,
            r.message[:200],
        )
        omit_value = rec.value is not None and len(rec.value) > self.settings.dead_letter_max_value_bytes
        doc = DeadLetter(
            id=None if r.id is None else _clean(r.id[:1024]),
            reason=r.reason,
            message=_clean(r.message[:2000]),
            source=Source(topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp_ms),
            key_b64=b64(rec.key),
            value_b64=None if omit_value else b64(rec.value),
            value_size=None if rec.value is None else len(rec.value),
            value_sha256=None if rec.value is None else hashlib.sha256(rec.value).hexdigest(),
            value_omitted=omit_value,
            headers=[HeaderValue(key=k, value_b64=b64(v)) for k, v in rec.headers],
            failed_at_ms=int(self.clock() * 1000) if now_ms is None else now_ms,
        )
        out = OutputRecord(
            topic=self.settings.dead_letter_topic,
            key=rec.key,
            value=b"",
            headers=[],
            kind="dead_letter",
            id=r.id,
            source=rec,
            reason=r.reason,
        )
        return self._fit(out, doc, self.settings.max_message_bytes)

    def _fit(self, out: OutputRecord, doc: DeadLetter, limit: int) -> OutputRecord:
        """Set ``out``'s value and headers from ``doc``, slimmed step by step until the record fits ``limit``."""
        rec = out.source
        own = [
            (CONTENT_TYPE_HEADER, DEAD_LETTER_CONTENT_TYPE.encode()),
            (SCHEMA_HEADER, DEAD_LETTER_SCHEMA.encode()),
            (SOURCE_HEADER, source_tag(rec)),
            (DLQ_REASON_HEADER, (out.reason or "").encode()),
        ]
        passthrough = passthrough_headers(rec.headers, self.settings.max_passthrough_header_bytes)
        for step in range(4):
            if step == 1:  # the original value
                doc.value_b64, doc.value_omitted = None, rec.value is not None
            elif step == 2:  # the original headers, in the body and on the record
                doc.headers, doc.headers_omitted, passthrough = [], bool(rec.headers), []
            elif step == 3:  # the key, and a long message
                doc.key_b64, doc.key_omitted, out.key = None, rec.key is not None, None
                doc.message = doc.message[:500]
            out.value = doc.model_dump_json(by_alias=True).encode()
            out.headers = [*passthrough, *own]
            if record_size(out.key, out.value, out.headers) <= limit:
                break
        return out

    def shrink_dead_letter(self, o: OutputRecord, limit: int) -> OutputRecord:
        """The same dead letter slimmed to ``limit`` bytes (for one the broker refused as too large)."""
        doc = DeadLetter.model_validate_json(o.value)
        return self._fit(o, doc, limit)

    def demote_result(self, o: OutputRecord, why: str) -> OutputRecord:
        """A result the broker refused for good (too large for the topic) → its ``result_too_large`` dead letter."""
        scores = ""
        try:
            doc = ScoreResult.model_validate_json(o.value)
            scores = f"; scores {json.dumps(doc.scores)}, flagged {sorted(c for c, f in doc.flagged.items() if f)}"
        except ValueError:
            pass
        return self.dead_letter(Rejected(o.source, o.id, "result_too_large", f"{why}{scores}"))


def _depth(x: Any, limit: int = 10_000) -> int:
    """Nesting depth of a JSON value (iterative: a deep value cannot exhaust the stack here)."""
    deepest, stack = 0, [(x, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > limit:
                break
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """JSON numbers as floats; one that overflows to infinity is refused (it would come out as null)."""
    x = float(text)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return x


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _clean(s: str) -> str:
    """``s`` with anything UTF-8 cannot carry (lone surrogates) replaced, so JSON output never fails."""
    return s if _encodable(s) else s.encode("utf-8", "replace").decode("utf-8")


class _Reject(Exception):
    def __init__(self, rid: str | None, reason: str, message: str) -> None:
        super().__init__(message)
        self.id = rid
        self.reason = reason
        self.message = message
