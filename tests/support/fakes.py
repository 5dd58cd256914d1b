"""A fake model for the handler and worker unit tests: deterministic scores from the pixels, failures on demand.
No onnxruntime; the integration and chaos tests use the real exported model instead."""

from __future__ import annotations

import numpy as np

from dangerclip.runtime.card import BackboneIdentity, ModelCard, PreprocessConfig
from service.handler import Handler, InputRecord
from service.metrics import Metrics
from service.settings import Settings

CATS = ["weapon", "knife"]


class FakeScorer:
    """Scores = mean of the red/green channel mapped to (0, 1); maps = per-patch version of the same."""

    def __init__(self, fail_on_batch: bool = False, fail_always: bool = False) -> None:
        self.card = ModelCard(
            name="fake",
            version="9.9.9",
            mode="trained",
            prompts=list(CATS),
            thresholds={"weapon": 0.5, "knife": 0.9},
            preprocess=PreprocessConfig(image_size=224),
            backbone=BackboneIdentity("fake", "", "0" * 64),
            grid=(14, 14),
            trained=True,
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
