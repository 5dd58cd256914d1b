"""The three Kafka message types, as pydantic v2 models, and ``dangerclip schema`` that exports them.

Input (``input_topic``), one of two encodings, chosen per record by its ``content-type`` header:

- **raw** (no header, ``image/*``, ``application/octet-stream``, anything that is not JSON): the record value
  is the encoded image; the record key (UTF-8) is the content id.
- **envelope** (``content-type: application/json``): the value is an ``ImageEnvelope`` JSON document,
  ``{"id", "image_b64" | "uri", "metadata"}``.

Result (``output_topic``): a ``ScoreResult`` JSON document, same key and headers as the input.

Dead letter (``dead_letter_topic``): a ``DeadLetter`` JSON document that carries the original value and
headers byte for byte (base64) with a reason code and a message; the Kafka record keeps the input's key and
headers and adds ``dangerclip-dlq-reason``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

RESULT_SCHEMA: Final = "dangerclip.result/v1"
RESULT_SCHEMA_IDENTIFIED: Final = "dangerclip.result/v1.1"
"""A result that carries ``identification`` says v1.1 (one optional object more); every other result stays v1,
byte for byte, so consumers of v1 see nothing new unless the identification stage is on and fires."""
DEAD_LETTER_SCHEMA: Final = "dangerclip.dead-letter/v1"

CONTENT_TYPE_HEADER = "content-type"
"""Header that picks the input encoding (case-insensitive name)."""

ENVELOPE_CONTENT_TYPES = ("application/json", "application/vnd.dangerclip.envelope+json")
"""``content-type`` values (before any ``;`` parameter) that mean the value is an ``ImageEnvelope``."""

DLQ_REASON_HEADER = "dangerclip-dlq-reason"
"""Header added to dead-letter records so consumers can filter by reason without parsing the value."""

SCHEMA_HEADER = "dangerclip-schema"
"""Header naming the value's schema (``dangerclip.result/v1`` or ``dangerclip.dead-letter/v1``)."""

SOURCE_HEADER = "dangerclip-source"
"""Header ``topic/partition/offset`` of the input record: a dedup key for consumers of at-least-once output."""

RESERVED_HEADER_PREFIX = "dangerclip-"
"""Headers with this prefix are written only by the worker: an input's own are never copied to its outputs."""

RESULT_CONTENT_TYPE = "application/json"
DEAD_LETTER_CONTENT_TYPE = "application/vnd.dangerclip.dead-letter+json"

Reason = Literal[
    "not_an_image",
    "too_many_pixels",
    "too_large",
    "decode_error",
    "bad_envelope",
    "bad_base64",
    "uri_not_allowed",
    "uri_fetch_failed",
    "inference_error",
    "result_too_large",
    "internal_error",
]
"""Why a record went to the dead-letter topic.

- ``not_an_image``: empty or null value, or bytes that are no image format we know.
- ``too_many_pixels``: the header declares more than ``max_pixels`` (decompression bombs).
- ``too_large``: value, base64 payload or fetched body over ``max_bytes`` / ``uri_max_bytes``.
- ``decode_error``: a recognised format that fails to decode (truncated, corrupt).
- ``bad_envelope``: a JSON envelope that is not strict JSON (NaN, nesting too deep, an integer past 4300
  digits), not an object, lacks fields, has wrong types or metadata over ``max_metadata_bytes``.
- ``bad_base64``: ``image_b64`` is not valid base64.
- ``uri_not_allowed``: fetching is off, the scheme is not http(s), the host is not on the allow-list, or it
  resolves to a link-local or metadata address (169.254.0.0/16, fe80::/10, ...).
- ``uri_fetch_failed``: an allowed ``uri`` could not be fetched within ``uri_timeout_s`` (status, deadline,
  connection, a broken HTTP reply, more than 5 redirects).
- ``inference_error``: the model failed on this one record (the rest of its batch was scored, and the model
  answered a health probe, so the model itself is fine).
- ``result_too_large``: the record was scored but its result exceeds ``max_message_bytes``; the dead letter
  carries the scores in its message.
- ``internal_error``: anything unexpected while handling this record (a bug or an input nobody foresaw); the
  worker logs it with topic, partition and offset and goes on.
"""

REASONS: tuple[str, ...] = Reason.__args__  # type: ignore[attr-defined]


class ImageEnvelope(BaseModel):
    """A JSON input record: an image inline (base64) or by reference, with metadata to carry through."""

    model_config = ConfigDict(extra="ignore", title="DangerCLIP input envelope")

    id: StrictStr = Field(min_length=1, max_length=1024, description="Content id, copied to the result.")
    image_b64: StrictStr | None = Field(None, description="The encoded image (JPEG, PNG, ...), base64.")
    uri: StrictStr | None = Field(
        None,
        max_length=4096,
        description="http(s) URL of the image; fetched only when the worker allows it and its host.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form JSON object, copied to the result unchanged."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImageEnvelope:
        if (self.image_b64 is None) == (self.uri is None):
            raise ValueError("exactly one of image_b64 and uri must be given")
        return self

    def image_bytes(self) -> bytes:
        """Decode ``image_b64`` strictly (``binascii.Error`` on bad input)."""
        assert self.image_b64 is not None
        return base64.b64decode(self.image_b64, validate=True)


class Source(BaseModel):
    """Where the input record was read from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(None, description="The input record's Kafka timestamp.")


class ModelRef(BaseModel):
    """Which model scored the image."""

    name: str
    version: str
    sha256: str = Field(description="sha256 of the ONNX file.")
    trained: bool = Field(description="False for a model whose head never saw data: scores mean nothing.")


class MapPeak(BaseModel):
    """One category's danger map in three numbers."""

    peak: float = Field(description="Highest patch probability.")
    peak_at: list[int] = Field(description="``[row, col]`` of that patch on the grid.")
    area: float = Field(description="Fraction of patches at or above 0.5.")


class DangerMap(BaseModel):
    """The patch-level danger map, compact.

    ``data`` (present with ``danger_map=grid``) is base64 of ``uint8`` values in row-major ``[k, h, w]``
    order, category order as in ``categories``; probability = value / 255.
    """

    categories: list[str]
    grid: list[int] = Field(description="``[h, w]`` patches.")
    summary: dict[str, MapPeak]
    encoding: Literal["uint8"] = "uint8"
    data: str | None = None


class Timings(BaseModel):
    """Where this record's time went, in seconds."""

    queue_s: float | None = Field(None, description="Record timestamp → the worker took it.")
    decode_s: float = Field(description="Fetch (uri), decode and preprocess.")
    inference_s: float = Field(description="The model run of the record's batch.")
    batch_size: int = Field(description="Records in the batch it was scored in.")


class ImageInfo(BaseModel):
    """The decoded image."""

    width: int
    height: int
    format: str | None = None
    bytes: int


class TypeScore(BaseModel):
    type: str
    probability: float


class TypeResult(BaseModel):
    """The firearm type the type head gives a flagged image."""

    model_config = ConfigDict(protected_namespaces=())

    type: str = Field(description="The most probable class of the type head's card.")
    probability: float = Field(description="Its calibrated probability.")
    confidence: Literal["high", "medium", "low"] = Field(
        description="From the card's cut points, chosen on held-out data (high: right >= 95 % of the time)."
    )
    look_alike: bool = Field(description="The type is a non-lethal look-alike (toy, alarm, airsoft, ...).")
    top: list[TypeScore] = Field(description="The most probable types, best first.")
    model: str = Field(description="The type head, name@version.")


class MatchResult(BaseModel):
    """A reference entry close to a flagged image (known-content matching)."""

    id: str
    label: str | None = None
    distance: float = Field(description="PDQ: Hamming distance (0-256); embedding: Euclidean, unit vectors (0-2).")
    signal: Literal["embedding", "pdq"]
    same_model: bool | None = Field(
        None, description="Embedding matches: within the embedder's calibrated match distance (the same model)."
    )


class Identification(BaseModel):
    """Which firearm a flagged image shows."""

    type: TypeResult | None = None
    matches: list[MatchResult] = Field(default_factory=list, description="Nearest reference entries, best first.")
    known_match: bool | None = Field(None, description="A match under the index's calibrated distance.")


class ScoreResult(BaseModel):
    """A scored image, on the output topic."""

    model_config = ConfigDict(title="DangerCLIP score result", populate_by_name=True, protected_namespaces=())

    schema_: Literal["dangerclip.result/v1", "dangerclip.result/v1.1"] = Field(RESULT_SCHEMA, alias="schema")
    id: str = Field(description="The input's content id: envelope id, else record key, else topic-partition-offset.")
    model: ModelRef
    scores: dict[str, float] = Field(description="Calibrated probability per category.")
    flagged: dict[str, bool] = Field(description="score >= threshold, per category.")
    any_flagged: bool
    thresholds: dict[str, float] = Field(description="The thresholds applied (model card + overrides).")
    danger_map: DangerMap | None = None
    image: ImageInfo
    timings: Timings
    source: Source
    metadata: dict[str, Any] = Field(default_factory=dict, description="Copied from the envelope.")
    scored_at_ms: int = Field(description="Wall clock (Unix ms) when the batch was scored.")
    identification: Identification | None = Field(
        None, description="v1.1: which firearm a flagged image shows (only with the identification stage on)."
    )


class HeaderValue(BaseModel):
    """A Kafka header, value base64 (headers are bytes)."""

    key: str
    value_b64: str | None


class DeadLetter(BaseModel):
    """An input record that could not be scored, on the dead-letter topic."""

    model_config = ConfigDict(title="DangerCLIP dead letter", populate_by_name=True)

    schema_: Literal["dangerclip.dead-letter/v1"] = Field(DEAD_LETTER_SCHEMA, alias="schema")
    id: str | None = Field(None, description="The content id when it could be read.")
    reason: Reason
    message: str = Field(description="What was wrong, for humans.")
    source: Source
    key_b64: str | None = Field(None, description="The original record key, base64 (null key: null).")
    value_b64: str | None = Field(
        None, description="The original record value, base64, untouched (null when null or omitted)."
    )
    value_size: int | None = Field(None, description="Size of the original value in bytes (null: null value).")
    value_sha256: str | None = Field(None, description="sha256 (hex) of the original value.")
    value_omitted: bool = Field(
        False, description="True when the value was too large to carry (see dead_letter_max_value_bytes)."
    )
    headers: list[HeaderValue] = Field(default_factory=list, description="The original headers, in order.")
    headers_omitted: bool = Field(
        False, description="True when the original headers were too large to carry (``headers`` is empty)."
    )
    key_omitted: bool = Field(
        False, description="True when the original key was too large to carry (``key_b64`` is null)."
    )
    failed_at_ms: int

    def original_value(self) -> bytes | None:
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


SCHEMAS: dict[str, type[BaseModel]] = {
    "input-envelope": ImageEnvelope,
    "result": ScoreResult,
    "dead-letter": DeadLetter,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of each message, by name."""
    out = {}
    for name, model in SCHEMAS.items():
        mode: Literal["validation", "serialization"] = "validation" if name == "input-envelope" else "serialization"
        schema = model.model_json_schema(by_alias=True, mode=mode)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://dangerclip.dev/schemas/{name}.schema.json"
        out[name] = schema
    return out


# ---------------------------------------------------------------------------- dangerclip schema
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write <name>.schema.json files into (default: print to stdout)",
    )
    parser.add_argument("--name", choices=sorted(SCHEMAS), default=None, help="only this message")


def run(args: argparse.Namespace) -> int:
    schemas = json_schemas()
    if args.name:
        schemas = {args.name: schemas[args.name]}
    if args.out is None:
        doc = schemas[args.name] if args.name else schemas
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        path = args.out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        sys.stdout.write(f"{path}\n")
    return 0
