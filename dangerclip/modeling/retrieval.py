"""DeepFirearm's retrieval network and losses (``001_…``, ``002_…``).

A fully convolutional backbone, **MAC** pooling (global max over the last feature map after its ReLU), then L2:
similarity is the dot product. The paper's backbone is VGG16's convolutional part (local ImageNet weights for
users; random here); ``small`` is a 5-block CNN that trains on 2 CPU cores. Losses, with ``d`` the Euclidean
distance of L2-normalised embeddings and ``y = 1`` for a same-class pair:

- double margin: ``½ [ y·max(d − α1, 0)² + (1 − y)·max(α2 − d, 0)² ]``, α1 = 0.8, α2 = 1.2;
- single margin (the contrastive baseline): ``½ [ y·d² + (1 − y)·max(α − d, 0)² ]``.

Stage 1 trains a class-weighted linear classifier on the pooled features (:class:`EmbeddingNet` with
``n_classes``); stage 2 fine-tunes the embedding on pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dangerclip.runtime.embedder import EMBEDDER_CARD_KEY, INPUT_NAME, OUTPUT_NAME, EmbedderCard

log = logging.getLogger(__name__)

BACKBONES = ("small", "vgg16")


def mac(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C]``: the global max of each channel."""
    return x.amax(dim=(-2, -1))


def build_backbone(name: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """A convolutional feature extractor and its channel count.

    Args:
        name: ``small`` or ``vgg16`` (torchvision's ``vgg16().features``: conv5_3 + ReLU, 512 channels).
        weights: a local torchvision VGG16 state dict (``vgg16-397923af.pth``) for ``vgg16``.

    Raises:
        ValueError: an unknown name (the message lists the choices).
    """
    if name == "small":
        layers: list[nn.Module] = []
        c_in = 3
        for c in (32, 64, 128, 192, 256):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        return nn.Sequential(*layers[:-1]), 256  # no pool after the last block: MAC takes the max itself
    if name == "vgg16":
        from torchvision.models import vgg16

        net = vgg16()
        if weights:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return nn.Sequential(*list(net.features.children())[:-1]), 512  # up to conv5_3's ReLU
    raise ValueError(f"unknown retrieval backbone {name!r}; choose one of {list(BACKBONES)}")


class EmbeddingNet(nn.Module):
    """Backbone → MAC → L2 (``embed``); with ``n_classes``, a linear classifier on the pooled features
    (stage 1)."""

    def __init__(self, backbone: nn.Module, dim: int, n_classes: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = dim
        self.classifier = nn.Linear(dim, n_classes) if n_classes else None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return mac(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pooled(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def double_margin_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, m1: float = 0.8, m2: float = 1.2):
    """DeepFirearm's double-margin contrastive loss over pairs of L2-normalised embeddings ``[P, D]``."""
    d = (a - b).norm(dim=-1)
    y = same.to(d.dtype)
    return 0.5 * (y * F.relu(d - m1) ** 2 + (1 - y) * F.relu(m2 - d) ** 2).mean()


def single_margin_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 1.0):
    """The contrastive baseline: positives pulled to 0, negatives pushed past ``margin``."""
    d = (a - b).norm(dim=-1)
    y = same.to(d.dtype)
    return 0.5 * (y * d**2 + (1 - y) * F.relu(margin - d) ** 2).mean()


class _Embed(nn.Module):
    """What is exported: images to unit embeddings."""

    def __init__(self, net: EmbeddingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


def export_embedder(net: EmbeddingNet, card: EmbedderCard, path: str | Path, atol: float = 1e-4) -> Path:
    """Write ``net``'s embedding as ONNX (``images [B, 3, S, S] -> embeddings [B, D]``, dynamic batch) with ``card``
    in its metadata, checked against torch like every export; the serving half reads it with
    :class:`dangerclip.runtime.embedder.Embedder`.

    Raises:
        ExportError: the exported graph disagrees with torch (a ``RuntimeError``).
    """
    from dangerclip.modeling.export import export_checked

    s = card.image_size
    err = export_checked(
        _Embed(net),
        torch.randn(2, 3, s, s),
        path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        metadata={EMBEDDER_CARD_KEY: card.to_json()},
        atol=atol,
        what="embedder",
    )
    log.info("embedder exported to %s (%d-d, max deviation %.1e)", path, card.dim, err)
    return Path(path)
