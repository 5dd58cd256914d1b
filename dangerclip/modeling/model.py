"""DangerCLIP: a light transformer over ``[descriptor tokens; patch tokens]`` on a frozen CLIP.

For each category ``c`` (a prompt; the paper's single prompt is ``weapon``) a query token is built with
ZegCLIP's relational descriptor from the text embedding ``t_c`` and the global image embedding ``g``:
``q_c = Linear(2D → D)([t_c ⊙ g, t_c])``. The ``k`` query tokens and the ``N`` patch tokens go through a
few pre-norm transformer layers; query token ``c`` then goes to a linear head whose sigmoid is the danger
probability of category ``c``. The pre-softmax attention logits of row ``c`` over the patch columns
(averaged over heads) are the danger map of ``c``: a learned scale and bias calibrate them into
per-patch log-odds, which the dense losses supervise in every layer and the last layer's map is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dangerclip.modeling.backbone import DenseCLIP
from dangerclip.runtime.card import ModelCard


@dataclass(frozen=True)
class HeadConfig:
    layers: int = 6
    width: int = 512
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0


class HeadOutput(NamedTuple):
    logits: torch.Tensor
    """``[B, k]`` image-level log-odds, one per category."""
    map_logits: torch.Tensor
    """``[L, B, k, N]`` calibrated per-patch log-odds from each of the ``L`` layers."""


class DangerOutput(NamedTuple):
    logits: torch.Tensor
    """``[B, k]``"""
    scores: torch.Tensor
    """``[B, k]`` probabilities."""
    map_logits: torch.Tensor
    """``[L, B, k, N]``"""
    maps: torch.Tensor
    """``[B, k, h, w]`` per-patch probabilities from the last layer."""


class HeadBlock(nn.Module):
    """Pre-norm transformer layer that also returns the first rows of its attention logits."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``x [B, k+N, W]``; ``k`` query tokens first. Returns ``x`` and ``A[:, :k, k:] [B, k, N]``."""
        bsz, n, width = x.shape
        hd = width // self.heads
        q, key, v = self.qkv(self.ln_1(x)).view(bsz, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q @ key.transpose(-1, -2)) * hd**-0.5  # [B, H, n, n]
        a = self.drop(torch.softmax(logits, dim=-1))
        y = (a @ v).transpose(1, 2).reshape(bsz, n, width)
        x = x + self.drop(self.out(y))
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, logits[:, :, :k, k:].mean(dim=1)


class DangerHead(nn.Module):
    """The trainable part: relational descriptor, transformer layers, classifier, map calibration.

    Args:
        text: ``[k, D]`` text embeddings of the prompts (normalised here; stored as a buffer).
        cfg: layer count, width, heads.
    """

    def __init__(self, text: torch.Tensor, cfg: HeadConfig) -> None:
        super().__init__()
        k, d = text.shape
        self.register_buffer("text", F.normalize(text.detach().float(), dim=-1))
        self.cfg = cfg
        self.q_proj = nn.Linear(2 * d, d)  # ZegCLIP's relational descriptor
        self.q_in = nn.Linear(d, cfg.width) if cfg.width != d else nn.Identity()
        self.p_in = nn.Sequential(nn.Linear(d, cfg.width), nn.LayerNorm(cfg.width))
        self.blocks = nn.ModuleList(
            HeadBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.classifier = nn.Linear(cfg.width, 1)
        # Attention logits → per-patch log-odds, calibrated per category (a knife's map and a gun's need not
        # share a scale). The bias starts at a low prior (most patches are safe), as focal-loss detectors
        # initialise theirs.
        self.map_scale = nn.Parameter(torch.ones(k))
        self.map_bias = nn.Parameter(torch.full((k,), -2.0))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # Checkpoints written before per-category calibration hold one scalar each: every category starts from it.
        for name in ("map_scale", "map_bias"):
            key = prefix + name
            if key in state_dict and state_dict[key].dim() == 0:
                state_dict[key] = state_dict[key].expand(self.num_categories).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_categories(self) -> int:
        return int(self.text.shape[0])

    def forward(self, g: torch.Tensor, patches: torch.Tensor) -> HeadOutput:
        """Args: ``g [B, D]`` normalised global embedding, ``patches [B, N, D]``."""
        t = self.text.to(patches.dtype)
        k = t.shape[0]
        bsz = g.shape[0]
        tt = t.unsqueeze(0).expand(bsz, -1, -1)  # [B, k, D]
        q = self.q_in(self.q_proj(torch.cat([tt * g.unsqueeze(1), tt], dim=-1)))
        x = torch.cat([q, self.p_in(patches)], dim=1)
        rows = []
        for blk in self.blocks:
            x, a = blk(x, k)
            rows.append(a)
        logits = self.classifier(self.norm(x[:, :k])).squeeze(-1)
        map_logits = torch.stack(rows) * self.map_scale[:, None] + self.map_bias[:, None]  # [L, B, k, N]
        return HeadOutput(logits, map_logits)


class ZeroShotHead(nn.Module):
    """No training: CLIP similarity of the image (and of each patch, MaskCLIP) to danger vs safe prompts.

    For category ``c`` the score is the softmax probability of ``c`` among ``{c} ∪ safe prompts`` at CLIP's
    logit scale; the map applies the same softmax to each normalised patch token.
    """

    def __init__(self, text: torch.Tensor, safe: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text", F.normalize(text.detach().float(), dim=-1))
        self.register_buffer("safe", F.normalize(safe.detach().float(), dim=-1))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @property
    def num_categories(self) -> int:
        return int(self.text.shape[0])

    def _log_odds(self, feats: torch.Tensor) -> torch.Tensor:
        # feats [..., D] normalised → [..., k] log-odds of each category against the safe prompts.
        s = self.logit_scale * (feats @ self.text.T)  # [..., k]
        z = torch.logsumexp(self.logit_scale * (feats @ self.safe.T), dim=-1, keepdim=True)  # [..., 1]
        return s - z

    def forward(self, g: torch.Tensor, patches: torch.Tensor) -> HeadOutput:
        logits = self._log_odds(g)
        pm = self._log_odds(F.normalize(patches, dim=-1)).transpose(1, 2)  # [B, k, N]
        return HeadOutput(logits, pm.unsqueeze(0))


class DangerCLIP(nn.Module):
    """Frozen dense CLIP + a head; ``forward`` maps images to scores and danger maps.

    Args:
        backbone: the frozen ``DenseCLIP``.
        head: a ``DangerHead`` (trained mode) or ``ZeroShotHead``.
        card: the model card (prompts, thresholds, preprocessing, backbone identity).
        config_name: the factory config this was built from.
        templates: prompt templates used for the text embeddings.
    """

    def __init__(
        self,
        backbone: DenseCLIP,
        head: DangerHead | ZeroShotHead,
        card: ModelCard,
        config_name: str,
        templates: tuple[str, ...] = ("{}",),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.card = card
        self.config_name = config_name
        self.templates = templates
        self.backbone_seed: int | None = None
        """Seed that rebuilds a random (unnamed) backbone; None when its weights come from a tag or file."""

    @property
    def grid(self) -> tuple[int, int]:
        return self.backbone.grid

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> DangerOutput:
        """Args: ``images [B, 3, S, S]`` preprocessed with ``card.preprocess``."""
        g, patches = self.backbone.encode_dense(images)
        return self.from_features(g, patches)

    def from_features(self, g: torch.Tensor, patches: torch.Tensor) -> DangerOutput:
        """The head on precomputed backbone features (training from a feature cache)."""
        out = self.head(g, patches)
        h, w = self.grid
        maps = torch.sigmoid(out.map_logits[-1]).reshape(g.shape[0], -1, h, w)
        return DangerOutput(out.logits, torch.sigmoid(out.logits), out.map_logits, maps)
