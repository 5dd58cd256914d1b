"""Self-describing checkpoints: one safetensors file with the model card and config in its metadata.

Tensors: the head (``head.*``, including the prompts' text embeddings, so serving needs no text tower) and,
optionally, the vision tower (``visual.*``) for backbones that no public tag names (the tiny demo CLIP).
Metadata: the model card (backbone identity and hash, prompts, thresholds, preprocessing, version), the
config the model was built from, and the prompt templates. A checkpoint refuses a backbone whose hash
differs from the one it was trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from dangerclip.modeling.backbone import BackboneError, DenseCLIP, build_clip, set_resolution, wants_quick_gelu
from dangerclip.modeling.factory import get_config
from dangerclip.modeling.model import DangerCLIP, DangerHead, HeadConfig, ZeroShotHead
from dangerclip.runtime.card import CARD_KEY, ModelCard
from dangerclip.runtime.filekind import expect

FORMAT = "dangerclip-checkpoint/1"


def save_checkpoint(
    model: DangerCLIP,
    path: str | Path,
    *,
    version: str | None = None,
    thresholds: dict[str, float] | None = None,
    metrics: dict[str, Any] | None = None,
    trained: bool | None = None,
    notes: str | None = None,
    include_backbone: bool = False,
) -> ModelCard:
    """Write ``model`` to ``path`` (atomically) and return the card written.

    Args:
        version, thresholds, metrics, trained, notes: update the model's card (and the model keeps them).
        include_backbone: also store the vision tower's weights, for backbones no pretrained tag names.
    """
    from safetensors.torch import save_file

    card = model.card
    if version is not None:
        card.version = version
    if thresholds is not None:
        unknown = sorted(set(thresholds) - set(card.prompts))
        if unknown:
            raise ValueError(f"thresholds for unknown categories {unknown}; model has {card.prompts}")
        card.thresholds = {**card.thresholds, **{k: float(v) for k, v in thresholds.items()}}
    if metrics is not None:
        card.metrics = dict(metrics)
    if trained is not None:
        card.trained = bool(trained)
    if notes is not None:
        card.notes = notes
    tensors = {f"head.{k}": v.detach().cpu().contiguous().clone() for k, v in model.head.state_dict().items()}
    if include_backbone:
        vis = model.backbone.clip.visual.state_dict()
        tensors.update({f"visual.{k}": v.detach().cpu().contiguous().clone() for k, v in vis.items()})
    cfg = get_config(model.config_name) if model.config_name else {}
    meta = {
        "format": FORMAT,
        CARD_KEY: card.to_json(),
        "dangerclip.config_name": model.config_name,
        "dangerclip.config": json.dumps(cfg, sort_keys=True),
        "dangerclip.templates": json.dumps(list(model.templates)),
    }
    if model.backbone_seed is not None:
        meta["dangerclip.backbone_seed"] = str(model.backbone_seed)
    if isinstance(model.head, DangerHead):
        meta["dangerclip.head"] = json.dumps(dataclasses.asdict(model.head.cfg))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return card


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a checkpoint file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        expect(path, "checkpoint", what="checkpoint")  # names what the file is instead (an image, an ONNX model)
        raise ValueError(f"{path} is not a safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DangerCLIP checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    return meta, tensors


def load_checkpoint(path: str | Path, pretrained: str | None = None, device: str | torch.device = "cpu") -> DangerCLIP:
    """Rebuild a model from a checkpoint; outputs are bit-identical to the model that was saved.

    Args:
        path: the ``.safetensors`` checkpoint.
        pretrained: where to find the CLIP weights when the checkpoint does not carry them (default: the
            tag or path recorded in the card).

    Raises:
        BackboneError: the backbone found is not the one the head was trained on (hash differs).
    """
    meta, tensors = read_checkpoint(path)
    card = ModelCard.from_json(meta[CARD_KEY])
    cfg = json.loads(meta["dangerclip.config"])
    config_name = meta.get("dangerclip.config_name", card.name)
    templates = tuple(json.loads(meta.get("dangerclip.templates", '["{}"]')))
    visual = {k[len("visual.") :]: v for k, v in tensors.items() if k.startswith("visual.")}
    seed = meta.get("dangerclip.backbone_seed")
    arch = card.backbone.arch
    # The activation the card records (QuickGELU or GELU leave no trace in the weights' hash).
    quick = arch.startswith("quickgelu") if arch else None
    if visual:
        clip = build_clip(cfg["clip"], None, quick_gelu=quick if quick is not None else _tag_quick(cfg, card))
        set_resolution(clip, card.preprocess.image_size)  # shapes first, then the saved (interpolated) weights
        clip.visual.load_state_dict(visual)
        source = card.backbone.pretrained
    else:
        source = pretrained if pretrained is not None else card.backbone.pretrained
        if not source:
            # A random backbone: its recorded seed rebuilds it; the hash check below decides.
            torch.manual_seed(int(seed or 0))
        clip = build_clip(cfg["clip"], source or None, quick_gelu=quick)
    if not visual:
        # A backbone rebuilt from its original weights runs at the card's resolution (embedded visual weights
        # already hold the interpolated position embeddings).
        set_resolution(clip, card.preprocess.image_size)
    backbone = DenseCLIP(clip, card.backbone.model, source)
    backbone.text_loaded = not visual
    if arch and backbone.arch != arch:
        raise BackboneError(
            f"{path} was trained on backbone architecture {arch} ({card.backbone.model}), but the backbone built "
            f"from {source or 'its config'} is {backbone.arch}: the activation or the shapes differ, so the "
            "features would not be the ones the head learned; rebuild the checkpoint or pass matching weights"
        )
    if backbone.sha256 != card.backbone.sha256:
        raise BackboneError(
            f"{path} was trained on backbone {card.backbone.model} ({card.backbone.pretrained or 'random'}) "
            f"with weights sha256 {card.backbone.sha256[:16]}…, but the backbone loaded from "
            f"{source or 'random init'} has sha256 {backbone.sha256[:16]}…; pass the right weights"
        )
    head_t = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    head: DangerHead | ZeroShotHead
    if card.mode == "zeroshot":
        head = ZeroShotHead(head_t["text"], head_t["safe"], float(head_t["logit_scale"]))
    else:
        head = DangerHead(head_t["text"], HeadConfig(**json.loads(meta["dangerclip.head"])))
    head.load_state_dict(head_t)
    model = DangerCLIP(backbone, head, card, config_name, templates).to(device)
    model.backbone_seed = int(seed) if seed is not None and not visual else None
    return model


def _tag_quick(cfg: dict[str, Any], card: ModelCard) -> bool | None:
    """For a card without a recorded architecture: the activation its pretrained tag implies."""
    name = cfg["clip"].get("open_clip")
    if not name:
        return None
    return wants_quick_gelu(str(name), card.backbone.pretrained or None, bool(cfg["clip"].get("quick_gelu", False)))


# `dangerclip create`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="model config (see `dangerclip models`)")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag (openai) or local CLIP weights file (default: the config's; 'random' for random weights)",
    )
    parser.add_argument("--mode", default="trained", choices=["trained", "zeroshot"])
    parser.add_argument(
        "--image-size", type=int, default=None, help="input side (default: the CLIP's own; 336 or 448 for finer maps)"
    )
    parser.add_argument("--prompts", nargs="+", default=None, help="categories (default: weapon)")
    parser.add_argument("--safe-prompts", nargs="+", default=None, help="zero-shot contrast prompts")
    parser.add_argument("--version", default=None, help="model version for the card")
    parser.add_argument("--include-backbone", action="store_true", help="store the vision tower's weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="checkpoint path (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from dangerclip.modeling.factory import create_model

    mode = args.mode
    version = args.version or ("0.0.0-zeroshot" if mode == "zeroshot" else "0.0.0-untrained")
    model = create_model(
        args.config,
        args.pretrained,
        args.prompts,
        mode,
        safe_prompts=args.safe_prompts,
        version=version,
        seed=args.seed,
        image_size=args.image_size,
    )
    notes = "zero-shot CLIP similarity; no training" if mode == "zeroshot" else "UNTRAINED head (random weights)"
    card = save_checkpoint(model, args.out, notes=notes, include_backbone=args.include_backbone)
    print(json.dumps({"checkpoint": str(args.out), "card": card.to_dict()}))
    return 0
