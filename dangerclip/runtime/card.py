"""The model card: everything a served model says about itself.

One JSON document travels with every checkpoint (safetensors metadata) and every ONNX export
(``metadata_props``), so that a scorer needs only a path. Pure Python: the service reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's normalisation (OpenAI's training statistics): the default of every DangerCLIP card."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet statistics: the inputs of the CNN baselines, VGG/ResNet embedders and GroundingDINO."""

CARD_KEY = "dangerclip.card"
"""Key of the card's JSON in safetensors metadata and ONNX ``metadata_props``."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input, exactly as CLIP's own transform does it.

    Resize the shortest side to ``image_size`` (bicubic, as PIL does it), centre-crop to a square,
    scale to [0, 1], normalise per channel.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            image_size=int(d.get("image_size", 224)),
            mean=tuple(d.get("mean", OPENAI_MEAN)),
            std=tuple(d.get("std", OPENAI_STD)),
            interpolation=str(d.get("interpolation", "bicubic")),
            resize_mode=str(d.get("resize_mode", "shortest")),
        )


@dataclass(frozen=True)
class BackboneIdentity:
    """Which frozen CLIP the head was trained on.

    Attributes:
        model: open_clip architecture name (``ViT-B-16``) or a DangerCLIP config name for tiny backbones.
        pretrained: open_clip pretrained tag (``openai``), a local file path, or ``""`` for random weights.
        sha256: hash of the backbone's weights (see ``dangerclip.modeling.backbone.state_dict_sha256``).
        arch: the architecture the weights ran in, activation included
            (``dangerclip.modeling.backbone.architecture_id``: ``quickgelu-…`` or ``gelu-…``); ``""`` in cards
            written before it was recorded.
    """

    model: str
    pretrained: str
    sha256: str
    arch: str = ""


@dataclass
class ModelCard:
    """What a DangerCLIP model is, how to feed it and how to read its outputs.

    Attributes:
        name: the DangerCLIP config name (``ViT-B-16``, ``tiny``, ...).
        version: model version string, carried into every result.
        mode: ``trained`` (the paper's head) or ``zeroshot`` (CLIP similarity, no training).
        prompts: one category per prompt; scores and maps come in this order.
        thresholds: per-category decision threshold on the score.
        preprocess: the input transform.
        backbone: identity of the frozen CLIP.
        grid: patch-grid size ``(h, w)`` of the danger maps.
        safe_prompts: prompts the zero-shot mode contrasts against.
        trained: False for a model whose head never saw data (say so to users).
        metrics: evaluation figures written by training (free-form).
        notes: a human-readable line or two.
    """

    name: str
    version: str
    mode: str
    prompts: list[str]
    thresholds: dict[str, float]
    preprocess: PreprocessConfig
    backbone: BackboneIdentity
    grid: tuple[int, int]
    safe_prompts: list[str] = field(default_factory=list)
    trained: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def categories(self) -> list[str]:
        return list(self.prompts)

    def threshold_vector(self) -> list[float]:
        return [float(self.thresholds.get(p, 0.5)) for p in self.prompts]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["preprocess"]["mean"] = list(self.preprocess.mean)
        d["preprocess"]["std"] = list(self.preprocess.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        missing = [k for k in ("name", "version", "mode", "prompts", "preprocess", "backbone") if k not in d]
        if missing:
            raise ValueError(f"model card is missing {missing}")
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            mode=str(d["mode"]),
            prompts=[str(p) for p in d["prompts"]],
            thresholds={str(k): float(v) for k, v in d.get("thresholds", {}).items()},
            preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            backbone=BackboneIdentity(**d["backbone"]),
            grid=(int(d["grid"][0]), int(d["grid"][1])) if "grid" in d else (14, 14),
            safe_prompts=[str(p) for p in d.get("safe_prompts", [])],
            trained=bool(d.get("trained", False)),
            metrics=dict(d.get("metrics", {})),
            notes=str(d.get("notes", "")),
        )

    @classmethod
    def from_json(cls, s: str) -> ModelCard:
        return cls.from_dict(json.loads(s))
