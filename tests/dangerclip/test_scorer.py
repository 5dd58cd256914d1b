"""Execution providers: a GPU provider asked for by name starts or fails loudly; ``auto`` falls back to the
CPU with a WARNING naming what failed; ``provider`` is what the session really runs on.

CI has no GPU, so the GPU cases are made the way they happen on a real node: onnxruntime lists a provider it
then cannot start (libraries missing, no device), either dropping it from the session or raising.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dangerclip.modeling.export import check_images
from dangerclip.runtime.scorer import DangerScorer, ProviderError, choose_providers

ort = pytest.importorskip("onnxruntime")
# onnxruntime warns when asked for a provider its C library lacks: the very case built here.
pytestmark = pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")

DEMO_MODEL = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "demo" / "model.onnx"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]


@pytest.fixture(scope="module")
def model() -> Path:
    if not DEMO_MODEL.exists():
        pytest.skip("the committed demo model is missing")
    return DEMO_MODEL


def _batch(scorer: DangerScorer, n: int = 2) -> np.ndarray:
    size = scorer.card.preprocess.image_size
    return np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)


def _scores_on_cpu(scorer: DangerScorer) -> None:
    scores, maps = scorer.predict(_batch(scorer))
    assert scores.shape == (2, len(scorer.categories)) and np.isfinite(scores).all()
    assert maps.shape[:2] == (2, len(scorer.categories))


@pytest.fixture
def gpu_build_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu on a node where the GPU providers cannot start: the build lists them, and onnxruntime
    drops them when the session is made (what it does when libcudart or the driver is missing)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_BUILD))


@pytest.fixture
def gpu_sessions_raise(monkeypatch: pytest.MonkeyPatch, gpu_build_without_a_gpu: None) -> str:
    """As above, but a session asking for a GPU provider raises (onnxruntime's other failure mode)."""
    reason = "libcudart.so.13: cannot open shared object file: No such file or directory"
    real = ort.InferenceSession

    def session(path: str, *args: Any, providers: list[str], **kwargs: Any) -> Any:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]  # (name, options) pairs too
        if any(p in (CUDA, TRT) for p in names):
            raise RuntimeError(reason)
        return real(path, *args, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    return reason


# ---------------------------------------------------------------------------- this machine (CPU build)
def test_auto_scores_on_the_cpu_of_a_cpu_build(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dangerclip.runtime.scorer"):
        scorer = DangerScorer(model)
    assert scorer.provider == CPU == scorer.session.get_providers()[0]
    assert not caplog.records, "a CPU build has no GPU to miss: nothing to warn about"
    _scores_on_cpu(scorer)


@pytest.mark.parametrize("providers", ["cuda", "tensorrt", [CUDA, CPU], "CUDAExecutionProvider"])
def test_a_named_gpu_provider_missing_from_the_build_is_an_error(model: Path, providers: Any) -> None:
    with pytest.raises(ProviderError, match="not in this onnxruntime build") as err:
        DangerScorer(model, providers=providers)
    assert CUDA in str(err.value) or TRT in str(err.value)
    assert isinstance(err.value, ValueError), "the CLI reports ValueErrors in one line"


def test_explicit_cpu_runs_on_the_cpu(model: Path) -> None:
    scorer = DangerScorer(model, providers="cpu")
    assert scorer.provider == CPU
    _scores_on_cpu(scorer)


def test_choose_providers_names_and_order() -> None:
    assert choose_providers("cpu") == [CPU]
    assert choose_providers(" CPU ") == [CPU]
    assert choose_providers("auto")[-1] == CPU
    with pytest.raises(ProviderError, match="no execution provider"):
        choose_providers([" ", ""])


def test_a_missing_model_says_how_to_supply_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        DangerScorer(tmp_path / "models" / "model.onnx")
    message = str(err.value)
    assert str(tmp_path / "models" / "model.onnx") in message and "export" in message and "\n" not in message


# ---------------------------------------------------------------------------- a GPU build that cannot start
def test_named_cuda_that_does_not_start_is_an_error_not_a_cpu_fallback(
    model: Path, gpu_build_without_a_gpu: None
) -> None:
    assert choose_providers("cuda") == [CUDA, CPU]
    with pytest.raises(ProviderError, match="did not start") as err:
        DangerScorer(model, providers="cuda")
    assert CUDA in str(err.value)


def test_named_cuda_whose_session_raises_is_an_error_carrying_the_cause(model: Path, gpu_sessions_raise: str) -> None:
    with pytest.raises(ProviderError, match="failed to start") as err:
        DangerScorer(model, providers=[CUDA, CPU])
    assert gpu_sessions_raise in str(err.value)


def test_auto_falls_back_to_the_cpu_loudly_when_gpu_providers_do_not_start(
    model: Path, gpu_build_without_a_gpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dangerclip.runtime.scorer"):
        scorer = DangerScorer(model, providers="auto")
    assert scorer.provider == CPU, "provider reports what the session really runs on"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(TRT in w for w in warnings) and any(CUDA in w for w in warnings), warnings
    assert any("CPU" in w for w in warnings[-1:]), warnings
    _scores_on_cpu(scorer)


def test_auto_names_the_exception_that_stopped_the_gpu(
    model: Path, gpu_sessions_raise: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dangerclip.runtime.scorer"):
        scorer = DangerScorer(model)
    assert scorer.provider == CPU
    assert any(gpu_sessions_raise in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    _scores_on_cpu(scorer)


def test_gpu_providers_get_an_engine_cache_shape_profiles_and_cuda_behind_tensorrt(tmp_path, monkeypatch):
    """Built and checked on the CPU: the options onnxruntime-gpu would get (no GPU here)."""
    import onnxruntime as ort

    from dangerclip.runtime.scorer import EngineOptions, choose_providers, provider_options

    engine = EngineOptions(image_size=336, max_batch=16, trt_cache_dir=str(tmp_path / "trt"), trt_fp16=True)
    (trt, trt_opts), (cuda, cuda_opts), cpu = provider_options(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], engine
    )
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_opts["trt_profile_min_shapes"] == "images:1x3x336x336"
    assert trt_opts["trt_profile_opt_shapes"] == "images:8x3x336x336"
    assert trt_opts["trt_profile_max_shapes"] == "images:16x3x336x336"
    assert trt_opts["trt_engine_cache_enable"] and trt_opts["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir() and trt_opts["trt_fp16_enable"] is True
    assert cuda_opts["do_copy_in_default_stream"] is True
    assert "trt_engine_cache_enable" not in provider_options(["TensorrtExecutionProvider"], EngineOptions())[0][1]
    # Asking for TensorRT by name puts CUDA behind it where this build has CUDA.
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu_build)
    assert choose_providers("tensorrt") == gpu_build
    assert choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_io_binding_gives_the_same_outputs_and_the_card_is_read_without_a_session(tiny_onnx_path, tiny_model):
    import onnxruntime as ort

    from dangerclip.runtime.onnxmeta import read_metadata

    batch = check_images(tiny_model, n=3, seed=5)
    plain = DangerScorer(tiny_onnx_path, providers="cpu")
    bound = DangerScorer(tiny_onnx_path, providers="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    for a, b in zip(plain.predict(batch), bound.predict(batch), strict=True):
        np.testing.assert_array_equal(a, b)
    meta = read_metadata(tiny_onnx_path)
    assert meta == ort.InferenceSession(str(tiny_onnx_path)).get_modelmeta().custom_metadata_map
    with pytest.raises(ValueError):
        read_metadata(Path(__file__))  # a Python file is no ModelProto
