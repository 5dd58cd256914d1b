"""The CLIP being pre-trained: building it from a DangerCLIP config, the dense forward pass with gradients,
the short-context text encoder, and its weights file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dangerclip.modeling.backbone import dense_forward
from dangerclip.runtime.card import OPENAI_MEAN, OPENAI_STD
from dangerclip.runtime.files import atomic_path


def tiny_clip_config(name: str = "tiny") -> dict[str, Any]:
    """open_clip's ``embed_dim``/``vision_cfg``/``text_cfg`` for a DangerCLIP config name.

    Raises:
        ValueError: the config names a public open_clip architecture (those come with their own weights).
    """
    from dangerclip.modeling.factory import get_config

    clip_cfg = get_config(name)["clip"]
    if "open_clip" in clip_cfg:
        raise ValueError(f"config {name!r} names a public open_clip architecture; pre-train custom configs only")
    return clip_cfg


def build_clip(name: str = "tiny", seed: int = 0) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` of a DangerCLIP config (``tiny`` by default)."""
    from dangerclip.modeling.backbone import build_clip as build

    cfg = tiny_clip_config(name)
    torch.manual_seed(seed)
    return build(cfg)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """``[B, S, S, 3]`` uint8 → ``[B, 3, S, S]`` float32 with CLIP's mean/std (as ``dangerclip.runtime.preprocess``)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def dense_tokens(
    clip: nn.Module, images: torch.Tensor, keep: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token embedding and MaskCLIP dense patch tokens, with gradients: ``dense_forward`` of the backbone
    module, so what is trained here is exactly what the head will read (see it for the arguments)."""
    return dense_forward(clip, images, keep=keep, generator=generator)


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` for tokens cut to a shorter context (not normalised).

    Under the causal mask, the end-of-text position sees only the tokens before it, so cutting the padding
    changes nothing but the cost (captions are about 30 tokens of the 77).

    Args:
        tokens: ``[B, L]`` with ``L <= context_length``; every row must hold its end-of-text token.
    """
    n = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:n]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ clip.text_projection


def save_clip(clip: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Save the full CLIP state dict as safetensors (``create_model(name, pretrained=path)`` loads it)."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=dict(metadata or {}))
    return path


def load_clip(path: str | Path, name: str = "tiny") -> nn.Module:
    """A CLIP of config ``name`` with the weights of ``path`` (strict: every key and shape must match)."""
    from safetensors.torch import load_file

    clip = build_clip(name)
    sd = load_file(str(path))
    clip.load_state_dict(sd, strict=True)
    return clip.eval()
