"""The batch handler with a fake model: no broker, no onnxruntime."""

from __future__ import annotations

import base64
import json

import jsonschema
import numpy as np
import pytest

from dangerclip.card import BackboneIdentity, ModelCard, PreprocessConfig
from service.handler import Handler, InputRecord, ModelError
from service.messages import DeadLetter, ScoreResult, json_schemas
from service.metrics import Metrics
from service.settings import Settings
from tests.service.conftest import ENVELOPE, jpeg_bytes, png_bytes, poison_corpus

CATS = ["weapon", "knife"]


class FakeScorer:
    """Scores = mean of the red/green channel mapped to (0, 1); maps = per-patch version of the same."""

    def __init__(self, fail_on_batch: bool = False, fail_always: bool = False) -> None:
        self.card = ModelCard(
            name="fake", version="9.9.9", mode="trained", prompts=list(CATS),
            thresholds={"weapon": 0.5, "knife": 0.9}, preprocess=PreprocessConfig(image_size=224),
            backbone=BackboneIdentity("fake", "", "0" * 64), grid=(14, 14), trained=True,
        )
        self.thresholds = np.asarray([0.5, 0.9], np.float32)
        self.sha256 = "f" * 64
        self.provider = "CPUExecutionProvider"
        self.fail_on_batch = fail_on_batch
        self.fail_always = fail_always
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert batch.shape[1:] == (3, 224, 224) and batch.dtype == np.float32
        self.calls.append(batch.shape[0])
        if self.fail_always or (self.fail_on_batch and batch.shape[0] > 1):
            raise RuntimeError("boom")
        patches = batch[:, :2].reshape(batch.shape[0], 2, 14, 16, 14, 16).mean(axis=(3, 5))
        maps = 1 / (1 + np.exp(-patches))
        return maps.mean(axis=(2, 3)).astype(np.float32), maps.astype(np.float32)


def rec(value: bytes | None, key: bytes | None = b"k", offset: int = 0, headers=None, partition: int = 0):
    return InputRecord("in", partition, offset, 1_700_000_000_000, key, value, list(headers or []))


def make_handler(**settings) -> tuple[Handler, FakeScorer, Metrics]:
    scorer = FakeScorer(**{k: settings.pop(k) for k in ("fail_on_batch", "fail_always") if k in settings})
    metrics = Metrics()
    s = Settings(_env_file=None, **settings)
    return Handler(scorer, s, metrics, clock=lambda: 1_700_000_001.0), scorer, metrics


def test_raw_and_envelope_records_become_results_in_order() -> None:
    h, scorer, _ = make_handler()
    records = [
        rec(jpeg_bytes(0), b"a", 0, [("traceparent", b"00-abc-01")]),
        rec(json.dumps({"id": "env-1", "image_b64": base64.b64encode(png_bytes(1)).decode(),
                        "metadata": {"user": 7}}).encode(), b"b", 1, ENVELOPE),
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
        max_bytes=max_bytes, max_pixels=10_000_000, uri_fetch_enabled=True,
        uri_allowed_hosts=[f"127.0.0.1:{image_server.port}"],
    )
    corpus = poison_corpus(image_server.url, max_bytes)
    good = [rec(jpeg_bytes(i), f"good-{i}".encode(), 100 + i) for i in range(3)]
    good.append(rec(json.dumps({"id": "by-uri", "uri": image_server.url + "/good.jpg"}).encode(), b"by-uri",
                    200, ENVELOPE))
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
    assert [o.kind for o in out[len(corpus):]] == ["result"] * 4
    assert ScoreResult.model_validate_json(out[-1].value).id == "by-uri"
    # the id is read from the envelope when it can be
    by_name = {p.name: DeadLetter.model_validate_json(o.value) for p, o in zip(corpus, out, strict=False)}
    assert by_name["bad_base64"].id == "p-bad-b64"
    assert by_name["random_bytes"].id == "p-random"


def test_uri_fetching_is_off_by_default(image_server) -> None:
    h, _, _ = make_handler()
    out = h.handle([rec(json.dumps({"id": "u", "uri": image_server.url + "/good.jpg"}).encode(), b"u", 0,
                        ENVELOPE)])
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
    # a single record the model fails on is that record's problem
    out = h.handle([rec(jpeg_bytes(0))])
    assert out[0].kind == "dead_letter" and out[0].reason == "inference_error"


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
