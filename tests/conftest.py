"""Session fixtures shared by every package's tests: a tiny DangerCLIP (random weights), its ONNX export,
and a folder of small real image files."""

from __future__ import annotations

import os
from pathlib import Path

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
