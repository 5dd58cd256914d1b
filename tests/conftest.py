"""Session fixtures shared by every package's tests: a tiny DangerCLIP (random weights), its ONNX export,
and a folder of small real image files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Tests run on 2 cores beside other work; keep BLAS/ORT from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def make_sample_images(folder: Path, n: int = 8, seed: int = 0) -> list[Path]:
    """Small photos-to-be: coloured backgrounds with a dark elongated shape or a round one; JPEG and PNG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(160, 400)), int(rng.integers(160, 400))
        bg = tuple(int(c) for c in rng.integers(80, 255, size=3))
        im = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(im)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        if i % 2 == 0:
            d.rectangle([x0, y0, x0 + w // 3, y0 + h // 10], fill=(20, 20, 20))
            d.rectangle([x0, y0, x0 + w // 14, y0 + h // 4], fill=(30, 30, 30))
        else:
            d.ellipse([x0, y0, x0 + w // 4, y0 + w // 4], fill=(200, 40, 40))
        p = folder / f"sample_{i:02d}.{'jpg' if i % 3 else 'png'}"
        im.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def sample_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("samples")
    make_sample_images(d)
    return d


@pytest.fixture(scope="session")
def tiny_model():
    """A ``tiny`` DangerCLIP with random weights (torch). Do not mutate it: it is shared."""
    pytest.importorskip("torch")
    from dangerclip.factory import create_model

    return create_model("tiny", seed=0).eval()


@pytest.fixture(scope="session")
def tiny_onnx_path(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported tiny DangerCLIP ONNX file (random weights, card in its metadata)."""
    from dangerclip.export import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
