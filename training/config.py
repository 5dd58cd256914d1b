"""``TrainConfig``: every knob of a training run, with the paper's defaults; loadable from JSON/YAML/TOML.

The same object comes from Python (``TrainConfig(data=...)``), from a config file, or from
``dangerclip train`` flags (file values first, flags override), and is stored with every checkpoint so a
run can be resumed and reproduced.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dangerclip.runtime.commandline import add_options, given_options

AMP_CHOICES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """A training run."""

    data: str = ""
    """Manifest (``.jsonl`` / ``.csv``) or folder ``<root>/<category or negative>/*``. Rows without a ``split``
    are split 80/10/10 by a hash of their id."""
    val_data: str = ""
    """Optional separate validation manifest (overrides the ``val`` split of ``data``)."""
    test_data: str = ""
    """Optional separate test manifest (overrides the ``test`` split of ``data``)."""
    categories: list[str] = field(default_factory=lambda: ["weapon"])
    """The model's prompts, one per category (the paper: ``["weapon"]``)."""
    model: str = "tiny"
    """DangerCLIP config name (``tiny``, ``ViT-B-16``)."""
    pretrained: str = ""
    """CLIP weights: an open_clip tag or a local file; empty takes the model config's (``openai`` for ``ViT-B-16``,
    random for the small configs); ``random`` asks for random weights explicitly."""
    image_size: int = 0
    """Input side in pixels: 0 for the CLIP's own (224), or 336 / 448 for a finer danger map (position
    embeddings interpolated bicubically); the model card carries it, so export and serving follow."""
    out: str = "runs/dangerclip"
    """Run folder (checkpoints, metrics, model, ONNX, report)."""
    cache_dir: str = ""
    """Feature-cache folder (default ``<out>/cache``); share it between runs on the same data."""
    batch_size: int = 32
    """Images per step (paper: 32)."""
    iterations: int = 2000
    """Optimiser steps (paper: 2000)."""
    lr: float = 2e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to biases, norms and the map calibration)."""
    warmup: int = 100
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.01
    """The cosine ends at ``lr * min_lr_ratio``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 0
    """Seeds the head's initialisation, the batch order and the view choice."""
    dense: bool = True
    """Train with the dense losses; False is the paper's no-dense ablation (BCE only)."""
    loss_weights: tuple[float, float, float] = (1.0, 2.0, 1.0)
    """``(α, β, γ)`` for BCE, focal and dice (paper: 1, 2, 1)."""
    focal_alpha: float = 0.25
    """Focal loss α for the map (RetinaNet's 0.25)."""
    flip: bool = True
    """Precompute mirrored views."""
    color_views: int = 2
    """Colour-jittered views per orientation."""
    grayscale: float = 0.2
    """Probability that a colour-jittered view is also turned grey."""
    amp: str = "auto"
    """Mixed precision on GPU (``auto`` = bf16 where supported, else fp16); always off on CPU."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``..."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep."""
    resume: str = ""
    """``""`` start fresh; ``auto`` continue from the newest checkpoint in ``out``; or a path."""
    stop_after: int = 0
    """Stop (with a checkpoint) after this step, as an interruption would; for tests and time-boxed jobs."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    eval_every: int = 250
    """Evaluate on the validation split every N steps (0: only at the end)."""
    threshold_target: str = "f1"
    """``f1`` (best F1 on val) or ``precision`` (highest recall at ``min_precision``)."""
    min_precision: float = 0.9
    """For ``threshold_target = precision``."""
    calibrate_maps: bool = True
    """Fold the IoU-best map threshold (chosen on val) into the head's map bias so that served maps read
    "danger" at 0.5."""
    export: bool = True
    """Write ``model.onnx`` at the end."""
    report: bool = True
    """Write ``report.md`` and plots at the end."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the ``tensorboard`` package)."""
    progress: bool = True
    """Show progress bars."""
    skip_bad: bool = False
    """Drop bad manifest rows (with a warning) instead of stopping."""
    version: str = "1.0.0"
    """Model version written into the card."""
    encode_batch: int = 64
    """Backbone inputs per call while building the cache."""

    def __post_init__(self) -> None:
        self.loss_weights = tuple(float(w) for w in self.loss_weights)  # type: ignore[assignment]
        self.categories = [str(c) for c in self.categories]

    def validate(self) -> None:
        """Raise ``ValueError`` naming every bad value."""
        bad = []
        if not self.data:
            bad.append("data: a manifest or folder is required")
        if not self.categories or len(set(self.categories)) != len(self.categories):
            bad.append(f"categories must be non-empty and distinct, got {self.categories}")
        for name in ("batch_size", "iterations"):
            if getattr(self, name) < 1:
                bad.append(f"{name} must be >= 1")
        if self.lr <= 0:
            bad.append("lr must be > 0")
        if self.warmup < 0 or self.color_views < 0 or self.checkpoint_every < 0:
            bad.append("warmup, color_views and checkpoint_every must be >= 0")
        if not 0.0 <= self.grayscale <= 1.0:
            bad.append("grayscale must be a probability in [0, 1]")
        if len(self.loss_weights) != 3:
            bad.append("loss_weights needs three numbers (bce, focal, dice)")
        if self.amp not in AMP_CHOICES:
            bad.append(f"amp must be one of {AMP_CHOICES}")
        if self.threshold_target not in ("f1", "precision"):
            bad.append("threshold_target must be 'f1' or 'precision'")
        if bad:
            raise ValueError("invalid training config: " + "; ".join(bad))

    @property
    def effective_loss_weights(self) -> tuple[float, float, float]:
        """The weights used: the no-dense ablation zeroes the dense terms."""
        a, b, c = self.loss_weights
        return (a, b, c) if self.dense else (a, 0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss_weights"] = list(self.loss_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a ``.json``, ``.yaml``/``.yml`` or ``.toml`` file of ``TrainConfig`` fields.

        Relative ``data``/``val_data``/``test_data``/``out``/``cache_dir``/``pretrained`` paths are taken
        relative to the file's folder, so a config travels with its dataset.
        """
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        suffix = p.suffix.lower()
        if suffix == ".json":
            d = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError as e:  # Python 3.10
                raise ValueError(f"{p}: TOML configs need Python 3.11+; use JSON or YAML") from e
            d = tomllib.loads(text)
        else:
            raise ValueError(f"{p}: config must be .json, .yaml or .toml")
        if not isinstance(d, dict):
            raise ValueError(f"{p}: config must be a mapping of TrainConfig fields")
        for key in ("data", "val_data", "test_data", "out", "cache_dir", "pretrained"):
            v = d.get(key)
            if not isinstance(v, str) or not v or Path(v).is_absolute():
                continue
            # ``pretrained`` may be an open_clip tag: rebase it only when it names a file beside the config.
            if key != "pretrained" or (p.parent / v).exists():
                d[key] = str(p.parent / v)
        return cls.from_dict(d)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A config file argument, then one option per ``TrainConfig`` field (unset unless given, so that the
    file's values stand)."""
    parser.add_argument("config", nargs="?", default=None, help="JSON/YAML/TOML file of TrainConfig fields")
    add_options(parser, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """File values, then options given on the command line."""
    base = TrainConfig.from_file(args.config).to_dict() if getattr(args, "config", None) else {}
    return TrainConfig.from_dict({**base, **given_options(TrainConfig, args)})
