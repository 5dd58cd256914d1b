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
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.runtime.card import CARD_KEY, ModelCard
from dangerclip.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_CPU = "CPUExecutionProvider"
_ALIASES = {
    "cpu": _CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


_TRT = "TensorrtExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_GPU = (_TRT, _CUDA)


@dataclass(frozen=True)
class EngineOptions:
    """How the GPU providers are set up.

    Attributes:
        image_size: the model's input side (from its card): TensorRT's shape profiles.
        max_batch: the largest batch the worker sends (``max_batch_size``): the profiles' upper end.
        trt_cache_dir: where TensorRT keeps built engines and timing caches, so a restart (or another pod on
            the same volume) does not rebuild them: minutes for ViT-B/16. ``None``: no cache.
        trt_fp16: let TensorRT run layers in fp16 (the export gate's fp16 tolerance applies).
    """

    image_size: int = 224
    max_batch: int = 32
    trt_cache_dir: str | None = None
    trt_fp16: bool = True


def provider_options(chain: Sequence[str], engine: EngineOptions) -> list[Any]:
    """``chain`` as onnxruntime's ``providers`` argument, each GPU provider with its options.

    TensorRT gets an engine and timing cache and one shape profile spanning batch 1 to ``max_batch`` (optimised
    for half of it), so it builds once per model file instead of per new batch shape; CUDA copies in its
    default stream (what IO binding expects).
    """
    out: list[Any] = []
    s = engine.image_size
    for p in chain:
        if p == _TRT:
            shape = f"{INPUT_NAME}:{{}}x3x{s}x{s}"
            opts: dict[str, Any] = {
                "trt_fp16_enable": engine.trt_fp16,
                "trt_profile_min_shapes": shape.format(1),
                "trt_profile_opt_shapes": shape.format(max(1, engine.max_batch // 2)),
                "trt_profile_max_shapes": shape.format(max(1, engine.max_batch)),
            }
            if engine.trt_cache_dir:
                Path(engine.trt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(engine.trt_cache_dir),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(engine.trt_cache_dir),
                )
            out.append((p, opts))
        elif p == _CUDA:
            out.append((p, {"do_copy_in_default_stream": True, "cudnn_conv_algo_search": "HEURISTIC"}))
        else:
            out.append(p)
    return out


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


class ProviderError(ValueError):
    """Execution providers that were asked for by name cannot run here.

    A ``ValueError`` because it comes from a setting (``providers``): the caller asked for a provider this
    onnxruntime build or this machine cannot give. Nothing falls back to the CPU in that case; only
    ``auto`` does.
    """


def _is_auto(requested: str | Sequence[str] | None) -> bool:
    return requested is None or (isinstance(requested, str) and requested.strip().lower() == "auto")


def choose_providers(requested: str | Sequence[str] | None = "auto") -> list[str]:
    """The execution providers to ask onnxruntime for, best first.

    ``auto`` (or None) means TensorRT → CUDA → CPU, keeping those this onnxruntime build has. A string names
    one provider or a short alias (``cpu``, ``cuda``, ``tensorrt``), a list several; explicit names must all
    be in this build, or :class:`ProviderError` says which are missing. The CPU provider is appended to an
    explicit list (onnxruntime places the few nodes a GPU provider cannot run on it); that never lets a
    whole session fall back to the CPU: :class:`DangerScorer` checks the session really uses what was asked.

    Raises:
        ProviderError: an explicitly named provider is not in this onnxruntime build.
    """
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    if _is_auto(requested):
        return [p for p in _PREFERRED if p in available]
    names = [requested] if isinstance(requested, str) else list(requested or ())
    wanted = [_ALIASES.get(p.strip().lower(), p.strip()) for p in names if p.strip()]
    if not wanted:
        raise ProviderError("no execution provider named; use auto, cpu, cuda, tensorrt or onnxruntime names")
    if _TRT in wanted and _CUDA not in wanted and _CUDA in available:
        # TensorRT runs the subgraphs it supports; CUDA takes the rest, which would otherwise land on the CPU.
        wanted.insert(wanted.index(_TRT) + 1, _CUDA)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ProviderError(
            f"execution provider(s) {missing} not in this onnxruntime build (it has {available}); "
            "install the GPU build (onnxruntime-gpu) or ask for providers=auto or cpu"
        )
    return list(dict.fromkeys([*wanted, _CPU]))


class DangerScorer:
    """Scores images with an exported DangerCLIP model.

    ``provider`` is the execution provider the session actually runs on (exported by the service as
    ``dangerclip_model_info{provider=...}``).

    Args:
        model_path: the ``.onnx`` file written by ``dangerclip export``.
        providers: ``auto`` (TensorRT → CUDA → CPU, the best this build and machine can start; a GPU
            provider that fails is logged as a WARNING and the next one is used), an alias (``cpu``, ``cuda``,
            ``tensorrt``) or a list of onnxruntime provider names, which must start or the constructor
            raises :class:`ProviderError`: a named GPU provider never falls back to the CPU.
        intra_op_threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        thresholds: per-category overrides of the card's thresholds.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] | None = "auto",
        intra_op_threads: int | None = None,
        thresholds: dict[str, float] | None = None,
        max_batch: int = 32,
        trt_cache_dir: str | Path | None = None,
        trt_fp16: bool = True,
        io_binding: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        from dangerclip.runtime.onnxmeta import read_metadata

        self.model_path = str(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(
                f"no ONNX model at {self.model_path}: export one (`dangerclip export ... --out model.onnx`) "
                "and mount it or bake it into the image at that path"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        # The card first (read from the file, no session): TensorRT's shape profiles need the input size.
        early = read_metadata(self.model_path).get(CARD_KEY)
        size = ModelCard.from_json(early).preprocess.image_size if early else 224
        engine = EngineOptions(size, max_batch, None if trt_cache_dir is None else str(trt_cache_dir), trt_fp16)
        self.session = _start_session(self.model_path, opts, providers, engine)
        # What the session really runs on: onnxruntime drops a provider that fails to start.
        self.provider = self.session.get_providers()[0]
        # IO binding: outputs bound to host memory, the input copied in the provider's own stream; it spares a
        # copy per output on a GPU and changes nothing on the CPU (where it is off unless asked for).
        self.io_binding = self.provider in _GPU if io_binding is None else io_binding
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
            batch: ``[B, 3, S, S]`` float32 from ``dangerclip.runtime.preprocess``.

        Returns:
            ``scores [B, k]`` and ``maps [B, k, h, w]``, float32 probabilities.
        """
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(f"expected a non-empty [B, 3, S, S] batch, got shape {batch.shape}")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.io_binding:
            scores, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
            return scores, maps
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        scores, maps = binding.copy_outputs_to_cpu()
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


def _start_session(
    model_path: str, opts: object, requested: str | Sequence[str] | None, engine: EngineOptions | None = None
) -> Any:
    """An ``InferenceSession`` on the providers asked for, or the reason it cannot have them.

    onnxruntime's own fallback is off: it would retry a failing GPU session on the CPU, or silently drop a
    provider it cannot load, and a GPU worker would hold a GPU while scoring on the CPU. Here ``auto`` walks
    down TensorRT → CUDA → CPU itself, logging each failure as a WARNING; explicit providers that do not
    start raise :class:`ProviderError`. Run-time fallback (``session.run`` retrying on the CPU after a GPU
    error) is off too, so ``provider`` stays true: a GPU failing later raises to the caller.
    """
    import onnxruntime as ort

    engine = engine or EngineOptions()

    def start(providers: list[str]) -> Any:
        session = ort.InferenceSession(
            model_path, sess_options=opts, providers=provider_options(providers, engine), enable_fallback=0
        )
        session.disable_fallback()
        return session

    wanted = choose_providers(requested)
    if not _is_auto(requested):
        try:
            session = start(wanted)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises RuntimeError, Fail, EPFail, ...
            raise ProviderError(f"execution provider(s) {wanted[:-1] or wanted} failed to start: {e}") from e
        got = session.get_providers()
        dropped = [p for p in wanted if p != _CPU and p not in got]
        if dropped:
            raise ProviderError(
                f"execution provider(s) {dropped} did not start (onnxruntime's log says why; the session had "
                f"only {got}): missing CUDA/cuDNN/TensorRT libraries, no GPU visible, or a driver too old"
            )
        return session
    # auto: the best chain that starts, each failure named.
    chains = [wanted[i:] for i in range(len(wanted)) if wanted[i] != _CPU] + [[_CPU]]
    for chain in chains:
        try:
            session = start(chain)
        except Exception as e:  # noqa: BLE001 - see above
            if chain == [_CPU]:
                raise
            log.warning("execution provider %s failed to start (%s); trying %s", chain[0], e, chain[1])
            continue
        got = session.get_providers()
        if chain[0] != _CPU and chain[0] not in got:
            log.warning(
                "execution provider %s did not start (onnxruntime dropped it; its log says why); trying %s",
                chain[0],
                chain[1],
            )
            continue
        if chain[0] == _CPU and len(wanted) > 1:
            log.warning("providers=auto: no GPU provider started (%s); SCORING ON THE CPU", wanted[:-1])
        return session
    raise AssertionError("unreachable: the CPU chain either returns or raises")
