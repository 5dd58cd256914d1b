"""The served retrieval embedder: DeepFirearm's MAC embedding as an ONNX graph, and the card that says how to read it
(no torch).

``embed`` maps decoded images to L2-normalised ``[N, D]`` vectors: the cosine similarity of two is their dot
product, and their Euclidean distance ``sqrt(2 - 2 cos)``. The card carries the distance below which two images
were the same firearm model on held-out classes with the precision it names (``match_distance``), so an index can
say "this is model X" and not only "X is nearest".
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

EMBEDDER_CARD_KEY = "dangerclip.embedder_card"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


@dataclass
class EmbedderCard(JsonCard):
    """What an embedder is and how to read it.

    Attributes:
        name: model name.
        version: carried into every match.
        dim: embedding size ``D``.
        image_size: input side ``S`` (shortest side resized, centre crop).
        mean, std: input normalisation.
        match_distance: Euclidean distance at or below which two images were the same model on held-out classes
            with precision ``match_precision`` (None: not calibrated).
        match_precision: that precision.
        backbone: the backbone and its training (``small/cls+double``).
        metrics: held-out retrieval figures (mAP, rank-k).
        notes: a line or two for people.
    """

    REQUIRED = ("name", "version", "dim")
    name: str
    version: str
    dim: int
    image_size: int = 96
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    match_distance: float | None = None
    match_precision: float | None = None
    backbone: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


class Embedder:
    """An exported embedder on onnxruntime.

    Args:
        model_path: the ``.onnx`` file (``dangerclip retrieval train`` writes it).
        providers: onnxruntime execution providers.
        intra_op_threads: onnxruntime's thread count (``None``: its default).

    Raises:
        ValueError: the file is not an embedder (no card), or its output is not ``[N, D]``.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
    ) -> None:
        self.session, card = open_head(model_path, EMBEDDER_CARD_KEY, "embedder", providers, intra_op_threads)
        self.card = EmbedderCard.from_json(card)
        log.info("embedder %s %s: %d-d, %d px", self.card.name, self.card.version, self.card.dim, self.card.image_size)

    @property
    def dim(self) -> int:
        return self.card.dim

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """``[N, D]`` float32 unit vectors of decoded images."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), batch_size):
            x = preprocess_batch(images[i : i + batch_size], self.card.preprocess)
            e = np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], np.float32)
            if e.ndim != 2 or e.shape[1] != self.dim:
                raise ValueError(f"embedder gave shape {e.shape}, its card says [N, {self.dim}]")
            out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out)

    def same_model(self, distance: float) -> bool | None:
        """Whether two images this far apart are the same model by the card's calibration (None: uncalibrated)."""
        d = self.card.match_distance
        return None if d is None else bool(distance <= d)
