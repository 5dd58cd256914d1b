"""The identification stage: flagged images (only) get a firearm type from a real exported type head, results
carry it as v1.1, unflagged results stay v1 to the byte, and a failing stage never costs a record its result."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from service.identify import Identifier
from service.messages import RESULT_SCHEMA, RESULT_SCHEMA_IDENTIFIED, json_schemas
from service.metrics import Metrics
from service.settings import Settings
from tests.support.fakes import make_handler, rec
from tests.support.models import export_embedder

torch = pytest.importorskip("torch")
CLASSES = ["pistol", "rifle", "toy gun"]


@pytest.fixture(scope="module")
def type_head_path(tmp_path_factory: pytest.TempPathFactory):
    from dangerclip.modeling.typenet import TypeClassifier, build_backbone, export_type_head
    from dangerclip.runtime.typehead import TypeCard

    torch.manual_seed(0)
    backbone, spec = build_backbone("resnet-small")
    model = TypeClassifier(backbone, spec.feature_dim, len(CLASSES)).eval()
    card = TypeCard(
        name="test-types",
        version="0.0.1",
        classes=CLASSES,
        look_alike=["toy gun"],
        image_size=64,
        confidence={"high": 0.9, "medium": 0.5},
    )
    return export_type_head(model, card, tmp_path_factory.mktemp("types") / "type_head.onnx")


def _handler(type_head_path, **kw):
    from dangerclip.runtime.typehead import TypeHead

    handler, scorer, metrics = make_handler(**kw)
    handler.identifier = Identifier(type_head=TypeHead(type_head_path), metrics=metrics)
    return handler, scorer, metrics


def _red(seed: int, red: int = 230) -> bytes:
    """FakeScorer scores the red and green channels: a red image is flagged, a dark one is not."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.zeros((80, 96, 3), np.uint8)
    a[..., 0] = red + rng.integers(0, 20, (80, 96))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG")
    return buf.getvalue()


def test_flagged_results_carry_a_type_and_the_rest_stay_v1(type_head_path):
    handler, _, metrics = _handler(type_head_path)
    records = [rec(_red(0), offset=0), rec(_red(1, red=0), offset=1), rec(_red(2), offset=2)]
    out = handler.handle(records)
    docs = [json.loads(o.value) for o in out]
    assert [d["any_flagged"] for d in docs] == [True, False, True]
    schema = json_schemas()["result"]
    for o, d in zip(out, docs, strict=True):
        jsonschema.validate(d, schema)
        sent = dict(o.headers)["dangerclip-schema"]
        if d["any_flagged"]:
            assert d["schema"] == RESULT_SCHEMA_IDENTIFIED and sent == RESULT_SCHEMA_IDENTIFIED.encode()
            t = d["identification"]["type"]
            assert t["type"] in CLASSES and t["model"] == "test-types@0.0.1"
            assert t["look_alike"] == (t["type"] == "toy gun")
            assert [x["type"] for x in t["top"]][0] == t["type"] and len(t["top"]) == 3
            assert t["confidence"] == (
                "high" if t["probability"] >= 0.9 else "medium" if t["probability"] >= 0.5 else "low"
            )
        else:
            assert d["schema"] == RESULT_SCHEMA and "identification" not in d and sent == RESULT_SCHEMA.encode()
    # An unflagged result is what a worker without the stage writes, key for key (timings aside).
    plain, _, _ = make_handler()
    alone = json.loads(plain.handle([records[1]])[0].value)
    assert list(alone) == list(docs[1])
    assert {k: v for k, v in alone.items() if k != "timings"} == {k: v for k, v in docs[1].items() if k != "timings"}
    counted = sum(s.value for m in metrics.identified.collect() for s in m.samples if s.name.endswith("_total"))
    assert counted == 2


def test_a_failing_type_head_costs_no_result(type_head_path):
    handler, _, metrics = _handler(type_head_path)

    class Broken:
        card = handler.identifier.type_head.card

        def predict(self, images):
            raise RuntimeError("GPU fell off")

    handler.identifier.type_head = Broken()
    out = handler.handle([rec(_red(0), offset=0), rec(_red(1), offset=1)])
    docs = [json.loads(o.value) for o in out]
    assert [o.kind for o in out] == ["result", "result"]
    assert all(d["schema"] == RESULT_SCHEMA and "identification" not in d for d in docs)
    assert metrics.identification_errors._value.get() == 1


def test_the_worker_builds_the_stage_from_settings(type_head_path, tiny_onnx_path):
    from service.serve import build

    worker, metrics = build(Settings(_env_file=None, model_path=tiny_onnx_path, type_head_path=type_head_path))
    assert worker.handler.identifier is not None
    assert worker.handler.identifier.type_head.card.classes == CLASSES
    worker2, _ = build(Settings(_env_file=None, model_path=tiny_onnx_path), Metrics())
    assert worker2.handler.identifier is None


def test_an_embedder_comes_with_an_index_and_the_worker_searches_both_signals(tmp_path, tiny_onnx_path):
    from pydantic import ValidationError

    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index import IndexWriter
    from dangerclip.runtime.index.store import embedder_identity, entry_for_image
    from service.serve import build

    pytest.importorskip("pdqhash")
    e = export_embedder(tmp_path / "embedder.onnx", match_distance=0.3)
    with pytest.raises(ValidationError, match="embedder_path needs index_path"):
        Settings(_env_file=None, model_path=tiny_onnx_path, embedder_path=e)
    emb = Embedder(e)
    IndexWriter(tmp_path / "idx").write(
        [entry_for_image(_picture_other(), id="x")], emb.embed([_picture_other()]), embedder_identity(emb.card)
    )
    worker, _ = build(Settings(_env_file=None, model_path=tiny_onnx_path, index_path=tmp_path / "idx", embedder_path=e))
    assert worker.handler.identifier.matcher.reader.searches_embeddings


def test_an_identifier_needs_something_to_identify_with():
    with pytest.raises(ValueError):
        Identifier()


def test_flagged_images_are_matched_against_the_index_and_a_rebuilt_index_is_picked_up(tmp_path):
    import io

    from PIL import Image

    from dangerclip.runtime.index import IndexReader, IndexWriter
    from dangerclip.runtime.index.store import entry_for_image
    from service.identify import IndexMatcher

    pytest.importorskip("pdqhash")
    ref = Image.open(io.BytesIO(_red(7))).convert("RGB")
    # A red picture with structure (PDQ needs some), flagged by the fake model's red channel.
    from PIL import ImageDraw

    d = ImageDraw.Draw(ref)
    for i in range(6):
        d.rectangle([10 * i, 5 * i, 10 * i + 25, 5 * i + 30], fill=(255, 20 * i, 0))
    buf = io.BytesIO()
    ref.save(buf, "PNG")
    writer = IndexWriter(tmp_path / "idx")
    writer.write([entry_for_image(_picture_other(), id="other")])
    handler, _, _ = make_handler()
    reader = IndexReader(tmp_path / "idx")
    handler.identifier = Identifier(matcher=IndexMatcher(reader, top_k=2, reload_s=0.0))
    upload = io.BytesIO()
    ref.resize((72, 60)).save(upload, "JPEG", quality=70)
    doc = json.loads(handler.handle([rec(upload.getvalue())])[0].value)
    ident = doc["identification"]
    assert doc["schema"] == RESULT_SCHEMA_IDENTIFIED and ident["known_match"] is False
    assert [m["id"] for m in ident["matches"]] == ["other"] and ident["type"] is None
    writer.add([entry_for_image(ref, id="catalogue-17", label="pistol")])  # rebuilt while the worker runs
    doc = json.loads(handler.handle([rec(upload.getvalue())])[0].value)
    assert doc["identification"]["known_match"] is True
    assert doc["identification"]["matches"][0] == {
        "id": "catalogue-17",
        "label": "pistol",
        "distance": doc["identification"]["matches"][0]["distance"],
        "signal": "pdq",
        "same_model": None,  # PDQ says "this picture", not "this model"
    }

    # The same index rebuilt with a retrieval embedder: matches by embedding follow, each saying whether it is
    # the same model by the card's calibrated distance; known_match still comes from PDQ alone.
    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index.store import embedder_identity

    emb = Embedder(export_embedder(tmp_path / "embedder.onnx", match_distance=0.3))
    ident_of = embedder_identity(emb.card)
    writer.write([entry_for_image(_picture_other(), id="other")], emb.embed([_picture_other()]), ident_of)
    metrics = Metrics()
    reader_e = IndexReader(tmp_path / "idx", embedder=emb)
    handler.identifier = Identifier(matcher=IndexMatcher(reader_e, top_k=2), metrics=metrics)
    ident = json.loads(handler.handle([rec(upload.getvalue())])[0].value)["identification"]
    assert [(m["signal"], m["id"]) for m in ident["matches"]] == [("pdq", "other"), ("embedding", "other")]
    assert ident["known_match"] is False  # an embedding distance (0-2) is never read on PDQ's scale (31)
    catalogued = [entry_for_image(ref, id="catalogue-17", label="pistol")]
    writer.add(catalogued, embeddings=emb.embed([ref]), embedder=ident_of)
    handler.identifier.matcher.reload_s = 0.0
    ident = json.loads(handler.handle([rec(upload.getvalue())])[0].value)["identification"]
    assert [m["signal"] for m in ident["matches"]] == ["pdq", "pdq", "embedding", "embedding"]
    near = ident["matches"][2]
    assert near["id"] == "catalogue-17" and near["same_model"] == (near["distance"] <= 0.3)
    assert ident["known_match"] is True
    assert handler.identifier.keep_side == 2 * 224  # the embedder's 48 px needs no more than PDQ's floor
    counted = {
        (s.labels["signal"], s.labels["result"]): s.value
        for m in metrics.registry.collect()
        if m.name == "dangerclip_identification_matches"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counted[("pdq", "match")] == 1 and counted[("pdq", "no_match")] == 1  # unknown, then known
    assert counted.get(("embedding", "match"), 0) + counted.get(("embedding", "no_match"), 0) == 2


def _picture_other():
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (120, 90), (20, 40, 200))
    d = ImageDraw.Draw(im)
    for i in range(5):
        d.ellipse([15 * i, 10, 15 * i + 30, 60], fill=(250, 250, 10 * i))
    return im
