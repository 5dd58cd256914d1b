"""``DangerScorer``: a DangerCLIP ONNX model in onnxruntime, with numpy and Pillow only.

The ONNX graph takes preprocessed images ``[B, 3, S, S]`` (input ``images``) and returns ``scores [B, k]``
(probabilities) and ``maps [B, k, h, w]`` (per-patch danger probabilities). Its model card, read from the
graph's metadata, says how to preprocess, which categories the columns are and where the thresholds lie.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dangerclip.card import CARD_KEY, ModelCard
from dangerclip.preprocess import preprocess_batch

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        scores: ``{category: probability}``.
        flagged: ``{category: score >= threshold}``.
        map: ``[k, h, w]`` float32 per-patch danger probabilities.
    """

    scores: dict[str, float]
    flagged: dict[str, bool]
    map: np.ndarray

    @property
    def any_flagged(self) -> bool:
        return any(self.flagged.values())

    def map_summary(self) -> dict[str, dict[str, object]]:
        """Per category: peak value and its patch ``[row, col]``, and the fraction of patches above 0.5."""
        out: dict[str, dict[str, object]] = {}
        for i, c in enumerate(self.scores):
            m = self.map[i]
            r, col = np.unravel_index(int(np.argmax(m)), m.shape)
            out[c] = {
                "peak": round(float(m[r, col]), 4),
                "peak_at": [int(r), int(col)],
                "area": round(float((m >= 0.5).mean()), 4),
            }
        return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def choose_providers(requested: str | Sequence[str] | None = "auto") -> list[str]:
    """The execution providers to ask for, best first, among those this onnxruntime build has.

    ``auto`` (or None) means TensorRT → CUDA → CPU; a string names one provider or a short alias
    (``cpu``, ``cuda``, ``tensorrt``); a list is taken as given (unknown names are dropped with a warning).
    CPU is always appended so a session can always be made.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    aliases = {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
        "trt": "TensorrtExecutionProvider",
    }
    if requested in (None, "auto"):
        wanted: list[str] = list(_PREFERRED)
    elif isinstance(requested, str):
        wanted = [aliases.get(requested.lower(), requested)]
    else:
        wanted = [aliases.get(p.lower(), p) for p in requested]
    chosen = []
    for p in wanted:
        if p in available:
            chosen.append(p)
        elif requested not in (None, "auto"):
            log.warning("execution provider %s is not in this onnxruntime build (have %s)", p, sorted(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class DangerScorer:
    """Scores images with an exported DangerCLIP model.

    Args:
        model_path: the ``.onnx`` file written by ``dangerclip export``.
        providers: ``auto`` (TensorRT → CUDA → CPU, whichever this build and machine can run), an alias or
            a list of onnxruntime provider names.
        intra_op_threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        thresholds: per-category overrides of the card's thresholds.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] | None = "auto",
        intra_op_threads: int | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = str(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"ONNX model not found: {self.model_path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        wanted = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=wanted)
        except Exception as e:  # noqa: BLE001 - a GPU provider whose libraries are missing may raise here
            if wanted == ["CPUExecutionProvider"]:
                raise
            log.warning("could not create a session with %s (%s); falling back to CPU", wanted, e)
            self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in meta:
            raise ValueError(f"{self.model_path} has no DangerCLIP model card (metadata key {CARD_KEY!r})")
        self.card = ModelCard.from_json(meta[CARD_KEY])
        unknown = sorted(set(thresholds or {}) - set(self.card.prompts))
        if unknown:
            raise ValueError(f"threshold override for unknown categories {unknown}; model has {self.card.prompts}")
        merged = {**self.card.thresholds, **(thresholds or {})}
        self.thresholds = np.asarray([float(merged.get(c, 0.5)) for c in self.card.prompts], np.float32)
        self.sha256 = file_sha256(self.model_path)
        log.info(
            "loaded %s (version %s, %s, categories %s) on %s",
            self.model_path,
            self.card.version,
            self.card.mode,
            self.card.prompts,
            self.provider,
        )

    @property
    def categories(self) -> list[str]:
        return self.card.categories

    @property
    def version(self) -> str:
        return self.card.version

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on a preprocessed batch.

        Args:
            batch: ``[B, 3, S, S]`` float32 from ``dangerclip.preprocess``.

        Returns:
            ``scores [B, k]`` and ``maps [B, k, h, w]``, float32 probabilities.
        """
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(f"expected a non-empty [B, 3, S, S] batch, got shape {batch.shape}")
        scores, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.astype(np.float32, copy=False)})
        return scores, maps

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """``[B, k]`` scores → ``[B, k]`` bool, against the per-category thresholds."""
        return scores >= self.thresholds

    def score_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> list[Prediction]:
        """Preprocess and score RGB images, ``batch_size`` at a time."""
        out: list[Prediction] = []
        for i in range(0, len(images), batch_size):
            batch = preprocess_batch(images[i : i + batch_size], self.card.preprocess)
            scores, maps = self.predict(batch)
            out.extend(self.to_predictions(scores, maps))
        return out

    def to_predictions(self, scores: np.ndarray, maps: np.ndarray) -> list[Prediction]:
        flags = self.flag(scores)
        cats = self.card.prompts
        return [
            Prediction(
                scores={c: float(s[j]) for j, c in enumerate(cats)},
                flagged={c: bool(f[j]) for j, c in enumerate(cats)},
                map=m,
            )
            for s, f, m in zip(scores, flags, maps, strict=True)
        ]
