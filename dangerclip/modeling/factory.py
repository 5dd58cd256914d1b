"""Named model configs and the one factory that builds DangerCLIP models from them.

Configs are JSON files in ``model_configs/``: ``clip`` (an open_clip architecture name, or open_clip's own
``embed_dim``/``vision_cfg``/``text_cfg``), ``head`` (layers, width, heads) and the usual ``pretrained`` tag.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import torch

from dangerclip.modeling.backbone import DenseCLIP, build_clip, set_resolution
from dangerclip.modeling.model import DangerCLIP, DangerHead, HeadConfig, ZeroShotHead
from dangerclip.runtime.card import BackboneIdentity, ModelCard, PreprocessConfig

DEFAULT_PROMPTS = ("weapon",)
DEFAULT_SAFE_PROMPTS = (
    "an ordinary object",
    "people",
    "a landscape",
    "food",
    "an animal",
    "a building",
    "a phone",
    "a tool",
    "a toy",
    "furniture",
)
RANDOM_WEIGHTS = ("random", "none")
"""``pretrained`` values that ask for random CLIP weights explicitly."""
ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image containing {}.")
MODES = ("trained", "zeroshot")


@cache
def _configs() -> dict[str, dict[str, Any]]:
    out = {}
    for f in resources.files("dangerclip.modeling.model_configs").iterdir():
        if f.name.endswith(".json"):
            out[f.name[: -len(".json")]] = json.loads(f.read_text())
    return out


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(_configs())


def get_config(name: str) -> dict[str, Any]:
    cfgs = _configs()
    if name not in cfgs:
        raise ValueError(f"unknown DangerCLIP config {name!r}; choose one of {list_models()}")
    return json.loads(json.dumps(cfgs[name]))


def create_model(
    name: str,
    pretrained: str | None = None,
    prompts: Sequence[str] | None = None,
    mode: str = "trained",
    *,
    safe_prompts: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    version: str = "0.0.0-untrained",
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> DangerCLIP:
    """Build a DangerCLIP model.

    Args:
        name: a config from ``list_models()`` (``ViT-B-16`` is the paper's, ``tiny`` the test/demo one).
        pretrained: CLIP weights: an open_clip tag (``openai``) or a local file; ``None`` takes the config's
            ``pretrained`` (``openai`` for ``ViT-B-16``; random for the small configs, which declare none);
            ``"random"`` asks for random weights explicitly (a big model never gets them by default).
        prompts: one category per prompt (default ``["weapon"]``, as in the paper).
        mode: ``trained`` (the paper's head, to be trained) or ``zeroshot`` (CLIP similarity against
            ``safe_prompts``; useful with public CLIP weights and no training).
        safe_prompts: zero-shot contrast prompts.
        templates: prompt templates for the text embeddings (default: the bare prompt for ``trained``,
            as in the paper; a small photo-template ensemble for ``zeroshot``).
        version: model version for the card.
        seed: seeds the head's initialisation (and the random backbone when ``pretrained`` is None).
        device: where to put the model.
        image_size: input side in pixels (``None``: the CLIP's own, 224 for ViT-B/16); 336 or 448 run CLIP
            with bicubically interpolated position embeddings and a finer danger map (21×21, 28×28 patches).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    cfg = get_config(name)
    if pretrained is None:
        pretrained = cfg.get("pretrained") or None
    elif pretrained.strip().lower() in RANDOM_WEIGHTS or not pretrained.strip():
        pretrained = None
    prompts = list(prompts or DEFAULT_PROMPTS)
    if not prompts or len(set(prompts)) != len(prompts):
        raise ValueError(f"prompts must be non-empty and distinct, got {prompts}")
    if seed is not None:
        torch.manual_seed(seed)
    clip = build_clip(cfg["clip"], pretrained)
    if image_size:
        set_resolution(clip, int(image_size))
    backbone = DenseCLIP(clip, cfg["clip"].get("open_clip", name), pretrained or "")
    backbone.to(device)
    tmpl = tuple(templates or (ZEROSHOT_TEMPLATES if mode == "zeroshot" else ("{}",)))
    text = backbone.encode_text(prompts, tmpl)
    safe = list(safe_prompts or DEFAULT_SAFE_PROMPTS) if mode == "zeroshot" else []
    head: DangerHead | ZeroShotHead
    if mode == "zeroshot":
        scale = float(clip.logit_scale.exp().item())
        head = ZeroShotHead(text, backbone.encode_text(safe, tmpl), scale)
    else:
        head = DangerHead(text, HeadConfig(**cfg["head"]))
    card = ModelCard(
        name=name,
        version=version,
        mode=mode,
        prompts=prompts,
        thresholds={p: 0.5 for p in prompts},
        preprocess=preprocess_config(clip),
        backbone=BackboneIdentity(
            model=backbone.name, pretrained=pretrained or "", sha256=backbone.sha256, arch=backbone.arch
        ),
        grid=backbone.grid,
        safe_prompts=safe,
        trained=False,
    )
    model = DangerCLIP(backbone, head, card, name, tmpl).to(device)
    model.backbone_seed = seed if not pretrained else None
    return model


def preprocess_config(clip: torch.nn.Module) -> PreprocessConfig:
    """The preprocessing an open_clip CLIP expects (its ``preprocess_cfg``, OpenAI's statistics by default)."""
    pc = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    size = pc.get("size", clip.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    base = PreprocessConfig()
    return PreprocessConfig(
        image_size=int(size),
        mean=tuple(pc.get("mean", base.mean)),  # type: ignore[arg-type]
        std=tuple(pc.get("std", base.std)),  # type: ignore[arg-type]
        interpolation=str(pc.get("interpolation", base.interpolation)),
        resize_mode=str(pc.get("resize_mode", base.resize_mode)),
    )


# `dangerclip models`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the configs as JSON")


def run(args: argparse.Namespace) -> int:
    for n in list_models():
        c = get_config(n)
        if args.json:
            print(json.dumps({"name": n, **c}))
        else:
            print(f"{n:<10} {c.get('description', '')}")
    return 0
