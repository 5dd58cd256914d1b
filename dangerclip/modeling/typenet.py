"""Firearm-type classifiers: backbones for self-supervised pre-training and the served type head.

The SSL seed (``000_…``) pre-trains ResNet-50 (SimCLR) and ViT (DINO, MAE) and fine-tunes them; its best is ViT +
DINO. Here the same two families come in sizes that train on 2 CPU cores in minutes (``resnet-small``,
``vit-small`` at 64 px) and at the paper's size for users with a GPU (``resnet50``, ``vit-b-16``). Every backbone
maps ``[B, 3, S, S]`` (ImageNet-normalised) to ``[B, D]`` features; :class:`TypeClassifier` puts a linear head on
top; :func:`export_type_head` writes it to ONNX with a :class:`~dangerclip.runtime.typehead.TypeCard`, which the
serving half reads (``dangerclip.runtime.typehead``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dangerclip.runtime.typehead import INPUT_NAME, OUTPUT_NAME, TYPE_CARD_KEY, TypeCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: its family, feature size and the input size it is meant for."""

    name: str
    family: str  # "resnet" or "vit"
    image_size: int
    feature_dim: int


BACKBONES = {
    "resnet-small": BackboneSpec("resnet-small", "resnet", 64, 256),
    "vit-small": BackboneSpec("vit-small", "vit", 64, 192),
    "resnet50": BackboneSpec("resnet50", "resnet", 224, 2048),
    "vit-b-16": BackboneSpec("vit-b-16", "vit", 224, 768),
}
"""What ``--backbone`` accepts. The small two train on a laptop; the big two are the seed paper's."""


class _ViTFeatures(nn.Module):
    """torchvision's VisionTransformer up to the class token (its classification head dropped)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v._process_input(x)
        cls = v.class_token.expand(x.shape[0], -1, -1)
        x = v.encoder(torch.cat([cls, x], dim=1))
        return x[:, 0]


def build_backbone(name: str) -> tuple[nn.Module, BackboneSpec]:
    """A randomly initialised backbone ``[B, 3, S, S] -> [B, D]`` and its spec.

    Raises:
        ValueError: ``name`` is not one of :data:`BACKBONES` (the message lists them).
    """
    from torchvision.models import resnet50, vit_b_16
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.models.vision_transformer import VisionTransformer

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    net: nn.Module
    if name == "resnet-small":
        # ResNet-10 (one BasicBlock per stage) with the stem's stride kept and the max-pool dropped: 64 px inputs
        # keep a 4x4 map at the last stage.
        net = ResNet(BasicBlock, [1, 1, 1, 1])
        net.maxpool = nn.Identity()
        net.layer4 = nn.Sequential(BasicBlock(256, 256))
        net.fc = nn.Identity()
    elif name == "resnet50":
        net = resnet50()
        net.fc = nn.Identity()
    elif name == "vit-small":
        vit = VisionTransformer(
            image_size=64, patch_size=8, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=1
        )
        net = _ViTFeatures(vit)
    else:
        net = _ViTFeatures(vit_b_16())
    return net, spec


class TypeClassifier(nn.Module):
    """Backbone + linear head: ``[B, 3, S, S] -> [B, K]`` logits.

    Args:
        backbone: features ``[B, D]``.
        feature_dim: ``D``.
        n_classes: ``K``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _Probabilities(nn.Module):
    """What is exported: logits divided by the calibrated temperature, then softmax."""

    def __init__(self, model: TypeClassifier, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x) * self.inv_t, dim=-1)


def export_type_head(model: TypeClassifier, card: TypeCard, path: str | Path, atol: float = 1e-4) -> Path:
    """Write ``model`` as ONNX (``images [B, 3, S, S] -> probabilities [B, K]``, dynamic batch) with ``card``
    in its metadata, and check onnxruntime gives torch's probabilities within ``atol``.

    Raises:
        ExportError: the exported graph disagrees with torch (a ``RuntimeError``).
    """
    from dangerclip.modeling.export import export_checked

    s = card.image_size
    err = export_checked(
        _Probabilities(model, card.temperature),
        torch.randn(2, 3, s, s),
        path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        metadata={TYPE_CARD_KEY: card.to_json()},
        atol=atol,
        what="type head",
    )
    log.info("type head exported to %s (%d classes, max deviation %.1e)", path, len(card.classes), err)
    return Path(path)
