"""The served firearm-type head: an ONNX classifier and the card that says how to read it (no torch).

The result of a flagged image carries the type, its probability, a confidence level (``high`` / ``medium`` /
``low``, from probability cut points calibrated on held-out data and stored in the card) and a ``look_alike``
flag for the non-lethal family (toy, alarm, airsoft) so a moderation policy can treat them apart. The classes come
from the card, so a model retrained on another taxonomy serves without code changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD
from dangerclip.runtime.headfile import JsonCard, open_head
from dangerclip.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)

TYPE_CARD_KEY = "dangerclip.type_card"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
LEVELS = ("high", "medium", "low")


@dataclass
class TypeCard(JsonCard):
    """What a type head is and how to read it.

    Attributes:
        name: model name.
        version: carried into every result.
        classes: ``K`` class names in the output's order.
        look_alike: the classes that are non-lethal look-alikes (toy, alarm, airsoft, ...).
        image_size: input side ``S`` (shortest side resized, centre crop).
        mean, std: input normalisation.
        temperature: the logits were divided by this before the softmax (calibration; already in the graph).
        confidence: probability cut points: ``high`` at or above ``confidence["high"]``, ``medium`` at or above
            ``confidence["medium"]``, else ``low``. Chosen on held-out data (see ``training.ssl``).
        backbone: the backbone and how it was pre-trained (``vit-small/dino``).
        metrics: held-out figures (accuracy, per-class precision/recall, ECE).
        notes: a line or two for people.
    """

    REQUIRED = ("name", "version", "classes")
    name: str
    version: str
    classes: list[str]
    look_alike: list[str] = field(default_factory=list)
    image_size: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    temperature: float = 1.0
    confidence: dict[str, float] = field(default_factory=lambda: {"high": 0.9, "medium": 0.6})
    backbone: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def level(self, probability: float) -> str:
        if probability >= self.confidence.get("high", 1.01):
            return "high"
        if probability >= self.confidence.get("medium", 1.01):
            return "medium"
        return "low"


@dataclass
class TypePrediction:
    """The type of one image: the top class, its probability and level, and the runners-up."""

    type: str
    probability: float
    confidence: str
    look_alike: bool
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "probability": round(self.probability, 4),
            "confidence": self.confidence,
            "look_alike": self.look_alike,
            "top": [{"type": c, "probability": round(p, 4)} for c, p in self.top],
        }


class TypeHead:
    """An exported type head on onnxruntime.

    Args:
        model_path: the ``.onnx`` file (:func:`dangerclip.modeling.typenet.export_type_head` writes it).
        providers: onnxruntime execution providers.
        intra_op_threads: onnxruntime's thread count (``None``: its default).
        top_k: how many classes each prediction lists.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        top_k: int = 3,
    ) -> None:
        self.session, card = open_head(model_path, TYPE_CARD_KEY, "type head", providers, intra_op_threads)
        self.card = TypeCard.from_json(card)
        self.top_k = top_k
        self._look_alike = set(self.card.look_alike)
        log.info(
            "type head %s %s: %d classes (%d look-alike), %d px",
            self.card.name,
            self.card.version,
            len(self.card.classes),
            len(self._look_alike),
            self.card.image_size,
        )

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``[N, K]`` class probabilities of decoded images."""
        if not images:
            return np.zeros((0, len(self.card.classes)), np.float32)
        x = preprocess_batch(images, self.card.preprocess)
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], np.float32)

    def predict(self, images: Sequence[Image.Image]) -> list[TypePrediction]:
        out = []
        for p in self.probabilities(images):
            order = np.argsort(-p)[: self.top_k]
            best = int(order[0])
            name = self.card.classes[best]
            prob = float(p[best])
            out.append(
                TypePrediction(
                    type=name,
                    probability=prob,
                    confidence=self.card.level(prob),
                    look_alike=name in self._look_alike,
                    top=[(self.card.classes[int(i)], float(p[int(i)])) for i in order],
                )
            )
        return out
