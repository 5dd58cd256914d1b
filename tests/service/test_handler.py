"""The batch handler with a fake model: no broker, no onnxruntime."""

from __future__ import annotations

import base64
import json

import jsonschema
import numpy as np
import pytest

from service.handler import ModelError
from service.messages import DeadLetter, ScoreResult, json_schemas
from tests.support.fakes import CATS, make_handler, rec
from tests.support.service import ENVELOPE, jpeg_bytes, png_bytes, poison_corpus


def test_raw_and_envelope_records_become_results_in_order() -> None:
    h, scorer, _ = make_handler()
    records = [
        rec(jpeg_bytes(0), b"a", 0, [("traceparent", b"00-abc-01")]),
        rec(
            json.dumps(
                {"id": "env-1", "image_b64": base64.b64encode(png_bytes(1)).decode(), "metadata": {"user": 7}}
            ).encode(),
            b"b",
            1,
            ENVELOPE,
        ),
        rec(jpeg_bytes(2), None, 2),
    ]
    out = h.handle(records)
    assert [o.kind for o in out] == ["result"] * 3
    assert scorer.calls == [3]  # one model call for the batch
    docs = [ScoreResult.model_validate_json(o.value) for o in out]
    assert [d.id for d in docs] == ["a", "env-1", "in/0/2"]
    assert docs[1].metadata == {"user": 7}
    assert [d.source.offset for d in docs] == [0, 1, 2]
    assert docs[0].model.version == "9.9.9" and docs[0].thresholds == {"weapon": 0.5, "knife": 0.9}
    assert docs[0].image.width == 96 and docs[0].image.height == 80
    assert docs[0].timings.queue_s == pytest.approx(1.0) and docs[0].timings.batch_size == 3
    # flags follow the per-category thresholds
    for d in docs:
        assert d.flagged == {c: d.scores[c] >= t for c, t in d.thresholds.items()}
    # key and trace headers pass through; content-type becomes JSON
    assert out[0].key == b"a" and ("traceparent", b"00-abc-01") in out[0].headers
    assert ("content-type", b"application/json") in out[0].headers
    # the JSON validates against the exported schema (what consumers in other languages use)
    schema = json_schemas()["result"]
    for o in out:
        jsonschema.validate(json.loads(o.value), schema)


def test_danger_map_grid_round_trips_to_uint8() -> None:
    h, scorer, _ = make_handler(danger_map="grid")
    out = h.handle([rec(jpeg_bytes(3))])
    doc = ScoreResult.model_validate_json(out[0].value)
    grid = np.frombuffer(base64.b64decode(doc.danger_map.data), np.uint8).reshape(2, 14, 14)
    pixels = h.prepare(rec(jpeg_bytes(3))).pixels
    _, maps = scorer.predict(pixels[None])
    assert np.abs(grid / 255.0 - maps[0]).max() <= 0.5 / 255 + 1e-6
    r, c = doc.danger_map.summary["weapon"].peak_at
    assert maps[0, 0, r, c] == pytest.approx(maps[0, 0].max())


def test_danger_map_can_be_left_out() -> None:
    h, _, _ = make_handler(danger_map="none")
    doc = ScoreResult.model_validate_json(h.handle([rec(jpeg_bytes(3))])[0].value)
    assert doc.danger_map is None
    h, _, _ = make_handler(danger_map="summary")
    doc = ScoreResult.model_validate_json(h.handle([rec(jpeg_bytes(3))])[0].value)
    assert doc.danger_map.data is None and set(doc.danger_map.summary) == set(CATS)


def test_poison_corpus_gets_the_right_reasons_and_keeps_the_original_bytes(image_server) -> None:
    max_bytes = 200_000
    h, _, metrics = make_handler(
        max_bytes=max_bytes,
        max_pixels=10_000_000,
        uri_fetch_enabled=True,
        uri_allowed_hosts=[f"127.0.0.1:{image_server.port}"],
    )
    corpus = poison_corpus(image_server.url, max_bytes)
    good = [rec(jpeg_bytes(i), f"good-{i}".encode(), 100 + i) for i in range(3)]
    good.append(
        rec(json.dumps({"id": "by-uri", "uri": image_server.url + "/good.jpg"}).encode(), b"by-uri", 200, ENVELOPE)
    )
    records = [rec(p.value, p.key, i, p.headers) for i, p in enumerate(corpus)] + good
    out = h.handle(records)
    assert len(out) == len(records)
    for p, o in zip(corpus, out, strict=False):
        assert o.kind == "dead_letter", p.name
        dl = DeadLetter.model_validate_json(o.value)
        assert (p.name, dl.reason) == (p.name, p.reason), dl.message
        assert o.reason == p.reason and (o.headers[-1] == ("dangerclip-dlq-reason", p.reason.encode()))
        assert dl.original_value() == p.value  # untouched
        assert dl.value_size == (None if p.value is None else len(p.value))
        assert [(x.key, base64.b64decode(x.value_b64)) for x in dl.headers] == p.headers
        assert dl.message
        jsonschema.validate(json.loads(o.value), json_schemas()["dead-letter"])
    assert [o.kind for o in out[len(corpus) :]] == ["result"] * 4
    assert ScoreResult.model_validate_json(out[-1].value).id == "by-uri"
    # the id is read from the envelope when it can be
    by_name = {p.name: DeadLetter.model_validate_json(o.value) for p, o in zip(corpus, out, strict=False)}
    assert by_name["bad_base64"].id == "p-bad-b64"
    assert by_name["random_bytes"].id == "p-random"


def test_uri_fetching_is_off_by_default(image_server) -> None:
    h, _, _ = make_handler()
    out = h.handle([rec(json.dumps({"id": "u", "uri": image_server.url + "/good.jpg"}).encode(), b"u", 0, ENVELOPE)])
    assert out[0].kind == "dead_letter" and out[0].reason == "uri_not_allowed"


def test_a_record_that_breaks_the_model_is_dead_lettered_alone() -> None:
    h, scorer, _ = make_handler(fail_on_batch=True)
    out = h.handle([rec(jpeg_bytes(i), offset=i) for i in range(3)])
    # batch failed, then each record scored alone succeeded
    assert scorer.calls == [3, 1, 1, 1]
    assert [o.kind for o in out] == ["result"] * 3


def test_a_broken_model_raises_instead_of_dead_lettering_everything() -> None:
    h, _, _ = make_handler(fail_always=True)
    with pytest.raises(ModelError):
        h.handle([rec(jpeg_bytes(i), offset=i) for i in range(2)])
    # one-record batches too: at low traffic a broken model must not dead-letter every input
    with pytest.raises(ModelError):
        h.handle([rec(jpeg_bytes(0))])


def _white_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_record_the_model_fails_on_alone_is_dead_lettered_when_the_model_answers_a_probe() -> None:
    h, scorer, _ = make_handler()
    real = scorer.predict

    def fails_on_white(batch: np.ndarray):  # noqa: ANN202 - a record that breaks the model, nothing else
        if (batch.reshape(batch.shape[0], -1).min(axis=1) > 1.5).any():
            raise RuntimeError("kernel fault on this input")
        return real(batch)

    scorer.predict = fails_on_white
    out = h.handle([rec(_white_jpeg(), b"white")])
    assert out[0].kind == "dead_letter" and out[0].reason == "inference_error"
    out = h.handle([rec(jpeg_bytes(1), b"a", 0), rec(_white_jpeg(), b"white", 1), rec(jpeg_bytes(2), b"b", 2)])
    assert [o.reason for o in out] == [None, "inference_error", None]


def test_non_finite_model_output_is_a_model_failure() -> None:
    h, scorer, _ = make_handler()
    scorer.predict = lambda b: (np.full((b.shape[0], 2), np.nan, np.float32), np.zeros((b.shape[0], 2, 14, 14)))
    with pytest.raises(ModelError):
        h.handle([rec(jpeg_bytes(0))])


def test_large_dead_letter_values_are_replaced_by_size_and_hash() -> None:
    h, _, _ = make_handler(dead_letter_max_value_bytes=1000)
    value = b"x" * 5000
    out = h.handle([rec(value)])
    dl = DeadLetter.model_validate_json(out[0].value)
    assert dl.value_omitted and dl.value_b64 is None and dl.value_size == 5000
    import hashlib

    assert dl.value_sha256 == hashlib.sha256(value).hexdigest()


def test_metrics_are_recorded() -> None:
    h, _, m = make_handler()
    h.handle([rec(jpeg_bytes(i), offset=i) for i in range(4)])
    reg = m.registry
    assert reg.get_sample_value("dangerclip_batch_size_records_count") == 1
    assert reg.get_sample_value("dangerclip_batch_size_records_sum") == 4
    assert reg.get_sample_value("dangerclip_decode_duration_seconds_count") == 4
    assert reg.get_sample_value("dangerclip_inference_duration_seconds_count") == 1
    assert reg.get_sample_value("dangerclip_score_count", {"category": "knife"}) == 4
    assert reg.get_sample_value("dangerclip_queue_duration_seconds_count") == 4


# ---------------------------------------------------------------------------- hostile inputs and sizes
from service.handler import record_size  # noqa: E402


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError inside json
        b'{"id": "x", "image_b64": "AA==", "metadata": {"n": ' + b"9" * 5000 + b"}}",  # int past the digit limit
        b'{"id": "x", "image_b64": "AA==", "metadata": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}",
        b'{"id": "\\ud800", "image_b64": "AA=="}',  # a lone surrogate
        b'{"id": "x", "image_b64": "AA==", "metadata": {"a": NaN}}',  # not JSON, and would come out as null
        b'{"id": "x", "image_b64": "AA==", "metadata": {"a": 1e999}}',
    ],
    ids=["nested-100000", "int-5000-digits", "metadata-nested-900", "lone-surrogate", "nan", "overflow"],
)
def test_hostile_envelopes_get_a_dead_letter_not_an_exception(value: bytes) -> None:
    h, _, _ = make_handler()
    out = h.handle([rec(value, b"hostile", headers=ENVELOPE)])
    assert len(out) == 1 and out[0].kind == "dead_letter" and out[0].reason == "bad_envelope"
    assert record_size(out[0].key, out[0].value, out[0].headers) <= h.settings.max_message_bytes


def test_an_unforeseen_failure_is_that_records_internal_error() -> None:
    h, _, _ = make_handler()

    def explode(*_a, **_k):  # noqa: ANN202
        raise ZeroDivisionError("nobody foresaw this")

    h.fetcher.fetch = explode
    h.settings.uri_fetch_enabled = True
    env = json.dumps({"id": "u", "uri": "http://example.com/a.jpg"}).encode()
    out = h.handle([rec(env, b"u", 0, ENVELOPE), rec(jpeg_bytes(1), b"ok", 1)])
    assert [o.reason for o in out] == ["internal_error", None]
    assert "ZeroDivisionError" in DeadLetter.model_validate_json(out[0].value).message


def test_dead_letters_always_fit_the_message_limit() -> None:
    # 786 400 bytes that are not an image: with the value inline the dead letter would pass 1 MiB
    h, _, _ = make_handler(dead_letter_max_value_bytes=10 * 1024 * 1024)
    big_headers = [(f"h{i}", b"v" * 1000) for i in range(20)]
    out = h.handle([rec(b"\x00" * 786_400, b"k" * 300_000, headers=big_headers)])
    o = out[0]
    assert o.kind == "dead_letter" and o.reason == "not_an_image"
    assert record_size(o.key, o.value, o.headers) <= h.settings.max_message_bytes
    dl = DeadLetter.model_validate_json(o.value)
    assert dl.value_omitted and dl.value_size == 786_400 and dl.value_sha256
    # a small one keeps everything
    o = h.handle([rec(b"not an image", b"k", headers=[("trace", b"1")])])[0]
    dl = DeadLetter.model_validate_json(o.value)
    assert dl.original_value() == b"not an image" and not dl.headers_omitted and not dl.key_omitted


def test_metadata_over_the_cap_is_a_bad_envelope() -> None:
    h, _, _ = make_handler(max_metadata_bytes=1000)
    b64img = base64.b64encode(jpeg_bytes(1)).decode()
    out = h.handle(
        [
            rec(
                json.dumps({"id": "big", "image_b64": b64img, "metadata": {"x": "y" * 2000}}).encode(),
                b"big",
                0,
                ENVELOPE,
            ),
            rec(
                json.dumps({"id": "ok", "image_b64": b64img, "metadata": {"x": "y" * 100}}).encode(), b"ok", 1, ENVELOPE
            ),
        ]
    )
    assert [o.reason for o in out] == ["bad_envelope", None]


def test_a_result_over_the_message_limit_becomes_result_too_large() -> None:
    h, _, _ = make_handler(max_message_bytes=16 * 1024, max_passthrough_header_bytes=64 * 1024)
    o = h.handle([rec(jpeg_bytes(1), b"k", headers=[("big", b"x" * 20_000)])])[0]
    assert o.kind == "dead_letter" and o.reason == "result_too_large"
    assert '"weapon"' in DeadLetter.model_validate_json(o.value).message  # the scores travel in the message
    assert record_size(o.key, o.value, o.headers) <= 16 * 1024


def test_outputs_carry_safe_headers_only() -> None:
    h, _, _ = make_handler(max_passthrough_header_bytes=100)
    planted = [
        ("trace", b"abc"),
        ("DangerCLIP-Schema", b"forged"),
        ("dangerclip-dlq-reason", b"forged"),
        ("content-type", b"image/jpeg"),
    ]
    result = h.handle([rec(jpeg_bytes(1), b"k", offset=7, headers=planted)])[0]
    names = [k.lower() for k, _ in result.headers]
    assert ("trace", b"abc") in result.headers and b"forged" not in [v for _, v in result.headers]
    assert names.count("content-type") == 1 and dict(result.headers)["content-type"] == b"application/json"
    assert dict(result.headers)["dangerclip-source"] == b"in/0/7"
    dl = h.handle([rec(b"nope", b"k", offset=8, headers=planted)])[0]
    hd = dict(dl.headers)
    assert hd["content-type"] == b"application/vnd.dangerclip.dead-letter+json"
    assert hd["dangerclip-schema"] == b"dangerclip.dead-letter/v1" and hd["dangerclip-dlq-reason"] == b"not_an_image"
    # the dead letter's body still has the original headers byte for byte
    assert [x.key for x in DeadLetter.model_validate_json(dl.value).headers] == [k for k, _ in planted]
    # over the cap, none pass through
    many = h.handle([rec(jpeg_bytes(1), b"k", headers=[("a", b"x" * 200)])])[0]
    assert "a" not in [k for k, _ in many.headers]


def test_results_report_the_uploaded_size_and_unknown_formats_fail_at_start() -> None:
    import io

    from PIL import Image

    h, _, _ = make_handler()
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(buf, "JPEG")  # decoded at reduced scale
    doc = ScoreResult.model_validate_json(h.handle([rec(buf.getvalue())])[0].value)
    assert (doc.image.width, doc.image.height) == (3000, 2000)
    with pytest.raises(ValueError):
        make_handler(image_formats=["JPEG", "JPGE"])
