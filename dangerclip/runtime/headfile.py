"""What the served heads beside the detector share (the firearm-type head, the retrieval embedder): a card kept as
JSON in the ONNX file's metadata, and the onnxruntime session that reads it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig


class JsonCard:
    """Mixin for a dataclass card with ``image_size``, ``mean`` and ``std``: JSON both ways, and its preprocessing.
    ``REQUIRED`` names the fields a card must have; unknown fields are ignored (a newer writer's extras)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("name", "version")
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> str:
        d = asdict(self)  # type: ignore[call-overload]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Any:
        d = json.loads(text)
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{cls.__name__} is missing {missing}")
        d["mean"], d["std"] = tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD))
        known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.image_size, mean=self.mean, std=self.std)


def open_head(
    path: str | Path, card_key: str, what: str, providers: Sequence[str], intra_op_threads: int | None
) -> tuple[Any, str]:
    """An onnxruntime session of a served head and its card's JSON.

    Raises:
        ValueError: not an ONNX file, or one without the ``card_key`` metadata (the message says what it expected).
    """
    import onnxruntime as ort

    from dangerclip.runtime.filekind import expect

    expect(path, "onnx", what=what)
    opts = ort.SessionOptions()
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    meta = session.get_modelmeta().custom_metadata_map
    if card_key not in meta:
        raise ValueError(f"{path} has no {what} card ({card_key}): is it a {what}?")
    return session, meta[card_key]
