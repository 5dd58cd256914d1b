"""Message models and the exported JSON Schemas (``dangerclip schema``)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from dangerclip_cli.main import main
from service.messages import REASONS, SCHEMAS, ImageEnvelope, json_schemas


def test_schemas_are_valid_json_schema_and_name_every_reason() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"input-envelope", "result", "dead-letter"}
    for s in schemas.values():
        jsonschema.Draft202012Validator.check_schema(s)
    assert set(schemas["dead-letter"]["properties"]["reason"]["enum"]) == set(REASONS)


def test_envelope_schema_agrees_with_the_model() -> None:
    schema = json_schemas()["input-envelope"]
    good = {"id": "a", "image_b64": "AAAA", "metadata": {"k": [1, 2]}}
    jsonschema.validate(good, schema)
    ImageEnvelope.model_validate(good)
    for bad in ({"image_b64": "AAAA"}, {"id": 5, "image_b64": "AAAA"}, {"id": "", "uri": "http://x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ValidationError):
            ImageEnvelope.model_validate(bad)
    # exactly one image source (a cross-field rule the model enforces)
    with pytest.raises(ValidationError):
        ImageEnvelope.model_validate({"id": "a"})
    with pytest.raises(ValidationError):
        ImageEnvelope.model_validate({"id": "a", "image_b64": "AAAA", "uri": "http://x/y.jpg"})


def test_schema_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{n}.schema.json" for n in SCHEMAS)
    doc = json.loads((tmp_path / "result.schema.json").read_text())
    assert doc["$schema"].endswith("2020-12/schema") and "scores" in doc["properties"]
    capsys.readouterr()
    assert main(["schema", "--name", "dead-letter"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "DangerCLIP dead letter"
