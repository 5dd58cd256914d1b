"""Property-based fuzzing of the envelope parser: one terminal outcome per input, worker alive.

Whatever a producer writes with the JSON content type — nesting 100 000 levels deep, integers past Python's
4300-digit limit, NaN, lone surrogates, wrong types, random bytes, a ``uri`` to a hostile upstream —
``Handler.prepare`` returns a ``Prepared`` or a ``Rejected`` with a documented reason and never raises, and
``Handler.handle`` gives every record of a batch exactly one output that a consumer can read. ``internal_error``
is a valid outcome, but it is the catch-all for inputs nobody foresaw: a fuzzer that reaches it has found one,
so these tests treat it as a failure. The model is faked (``FakeScorer``); no broker, no onnxruntime.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.fetch import UriFetcher
from service.handler import Handler, InputRecord, Prepared, Rejected
from service.messages import REASONS, DeadLetter, ScoreResult
from service.metrics import Metrics
from service.settings import Settings
from tests.support.fakes import FakeScorer
from tests.support.hostile_http import PATHS, HostileServer, good_jpeg
from tests.support.service import ENVELOPE

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),  # two shared cores; a deep-nesting example builds 200 kB of JSON
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
JPEG_B64 = base64.b64encode(good_jpeg()).decode()
FETCH_TIMEOUT_S = 0.3

# ---------------------------------------------------------------------------- strategies
any_text = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=40)
"""Any code point, lone surrogates included (JSON may spell them ``\\ud800``)."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN and Infinity, json.loads reads them
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)


@st.composite
def deep_nesting(draw: st.DrawFn, depths: st.SearchStrategy[int] | None = None) -> bytes:
    """Arrays or objects nested up to 100 000 deep, closed or not, alone or in an envelope's field."""
    depth = draw(depths if depths is not None else (st.integers(1, 100_000) | st.integers(900, 1100)))
    opener, closer, leaf = draw(st.sampled_from([("[", "]", ""), ('{"a":', "}", "1")]))
    closers = draw(st.sampled_from([depth, 0, depth // 2]))
    inner = opener * depth + leaf + closer * closers
    where = draw(st.sampled_from(["top", "metadata", "id"]))
    if where == "top":
        return inner.encode()
    return f'{{"id": "deep", "image_b64": "{JPEG_B64}", "{where}": {inner}}}'.encode()


@st.composite
def huge_numbers(draw: st.DrawFn, digits: st.SearchStrategy[int] | None = None) -> bytes:
    """Integers with more digits than Python converts (4300), and numbers past the double range."""
    n = draw(digits if digits is not None else st.integers(4200, 60_000))
    forms = ["1" + "9" * (n - 1), "-" + "7" * n, "1e999999", "-1e400", "1" + "0" * n + ".5"]
    number = draw(st.sampled_from(forms if digits is None else forms[:2]))
    field = draw(st.sampled_from(["id", "image_b64", "uri", "metadata", "top", "metadata_value"]))
    if field == "top":
        return number.encode()
    if field == "metadata_value":
        return f'{{"id": "n", "image_b64": "{JPEG_B64}", "metadata": {{"n": {number}}}}}'.encode()
    return f'{{"id": "n", "image_b64": "{JPEG_B64}", "{field}": {number}}}'.encode()


@st.composite
def odd_strings(draw: st.DrawFn) -> bytes:
    """Huge, unicode and lone-surrogate strings in every field, escaped (``\\ud800``) or as raw UTF-8-ish bytes."""
    text = draw(any_text | st.text(min_size=1, max_size=10).map(lambda s: s * 200_000))
    field = draw(st.sampled_from(["id", "image_b64", "uri", "metadata_key", "metadata_value"]))
    doc: dict = {"id": "s", "image_b64": JPEG_B64}
    if field == "metadata_key":
        doc["metadata"] = {text: 1}
    elif field == "metadata_value":
        doc["metadata"] = {"k": text}
    else:
        doc[field] = text
        if field == "uri":
            del doc["image_b64"]
    if draw(st.booleans()):
        return json.dumps(doc).encode()  # \uXXXX escapes
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")  # raw bytes, surrogates too


b64_of_bytes = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
envelope_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | any_text,
        "image_b64": json_values | st.just(JPEG_B64) | b64_of_bytes,
        "uri": json_values | any_text | st.just("file:///etc/passwd"),
        "metadata": json_values,
    },
)
wrong_types = (envelope_fields | json_values).map(lambda doc: json.dumps(doc).encode())

hostile_envelopes = st.one_of(
    deep_nesting(),
    huge_numbers(),
    odd_strings(),
    wrong_types,
    st.binary(max_size=4096),  # random bytes with the JSON content type
    st.binary(max_size=256).map(lambda b: b'{"id": "x", "image_b64": "' + b),  # truncated JSON
)

valid_metadata = st.dictionaries(
    st.text(max_size=12),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**15), 10**15)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=12,
    ),
    max_size=6,
)
valid_ids = st.text(min_size=1, max_size=60)


# ---------------------------------------------------------------------------- the contract
def make_handler(fetcher: UriFetcher | None = None) -> Handler:
    return Handler(FakeScorer(), Settings(_env_file=None), Metrics(), fetcher=fetcher, clock=lambda: 1_700_000_001.0)


def record(value: bytes, offset: int = 0, headers: list | None = None) -> InputRecord:
    return InputRecord("in", 0, offset, 1_700_000_000_000, b"k", value, list(ENVELOPE if headers is None else headers))


def assert_terminal(item: Prepared | Rejected, rec: InputRecord) -> None:
    """``item`` is the one terminal outcome of ``rec``, and not the catch-all for the unforeseen."""
    assert isinstance(item, Prepared | Rejected), type(item)
    assert item.record is rec
    if isinstance(item, Rejected):
        assert item.reason in REASONS, item.reason
        assert item.reason != "internal_error", f"an input nobody foresaw: {item.message}"


def strict_json(value: bytes) -> object:
    """``value`` parsed as RFC 8259 JSON: no NaN or Infinity, which most consumers' parsers refuse."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(value, parse_constant=refuse)


@pytest.fixture(scope="module")
def handler() -> Handler:
    return make_handler()


@FUZZ
@given(value=hostile_envelopes)
def test_prepare_gives_every_hostile_envelope_one_terminal_outcome(handler: Handler, value: bytes) -> None:
    rec = record(value)
    assert_terminal(handler.prepare(rec), rec)


@FUZZ
@given(value=deep_nesting(depths=st.integers(2_000, 100_000)) | huge_numbers(digits=st.integers(4_301, 60_000)))
def test_deep_nesting_and_huge_integers_are_bad_envelopes(handler: Handler, value: bytes) -> None:
    rec = record(value)
    item = handler.prepare(rec)
    assert_terminal(item, rec)
    assert isinstance(item, Rejected) and item.reason == "bad_envelope", item


@FUZZ
@given(rid=valid_ids, metadata=valid_metadata)
def test_valid_envelopes_with_random_metadata_are_prepared_as_sent(handler: Handler, rid: str, metadata: dict) -> None:
    value = json.dumps({"id": rid, "image_b64": JPEG_B64, "metadata": metadata}).encode()
    rec = record(value)
    item = handler.prepare(rec)
    assert_terminal(item, rec)
    assert isinstance(item, Prepared), item.message if isinstance(item, Rejected) else None
    assert item.id == rid and item.metadata == metadata


@settings(FUZZ, max_examples=60)
@given(
    values=st.lists(
        hostile_envelopes
        | st.builds(lambda m: json.dumps({"id": "v", "image_b64": JPEG_B64, "metadata": m}).encode(), valid_metadata),
        min_size=1,
        max_size=6,
    )
)
def test_a_batch_gets_one_readable_output_per_record_and_the_worker_goes_on(handler: Handler, values: list) -> None:
    good = record(json.dumps({"id": "after", "image_b64": JPEG_B64}).encode(), offset=len(values))
    records = [record(v, offset=i) for i, v in enumerate(values)] + [good]
    out = handler.handle(records)
    assert [o.source for o in out] == records  # one output each, in order
    for o in out:
        assert o.kind in ("result", "dead_letter")
        assert len(o.value) <= handler.settings.max_message_bytes
        strict_json(o.value)
        if o.kind == "dead_letter":
            doc = DeadLetter.model_validate_json(o.value)
            assert doc.reason in REASONS and doc.reason != "internal_error", doc.message
        else:
            ScoreResult.model_validate_json(o.value)
    assert out[-1].kind == "result" and out[-1].id == "after"  # the handler still scores what follows


# ---------------------------------------------------------------------------- a hostile upstream behind a uri
@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    srv = HostileServer(interval_s=0.05)
    yield srv
    srv.close()


@settings(FUZZ, max_examples=40, deadline=None)
@given(path=st.sampled_from(sorted(PATHS)), rid=valid_ids, metadata=valid_metadata)
def test_a_uri_to_a_hostile_upstream_ends_in_time(hostile: HostileServer, path: str, rid: str, metadata: dict) -> None:
    fetcher = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=FETCH_TIMEOUT_S)
    h = make_handler(fetcher)
    rec = record(json.dumps({"id": rid, "uri": hostile.url(path), "metadata": metadata}).encode())
    t0 = time.monotonic()
    item = h.prepare(rec)
    took = time.monotonic() - t0
    assert_terminal(item, rec)
    assert took <= FETCH_TIMEOUT_S + 1.0, (path, took)
    if path in ("/good.jpg", "/redirect-good"):
        assert isinstance(item, Prepared) and item.id == rid
    else:
        assert isinstance(item, Rejected) and item.reason in ("uri_fetch_failed", "uri_not_allowed", "too_large")
