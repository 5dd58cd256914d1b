"""The detector and segmenter a ``JobConfig`` names, and the check that their weight files are there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pseudomask.config import JobConfig


def build_models(cfg: JobConfig, categories: Sequence[str], device: torch.device) -> tuple[Any, Any]:
    """The detector and segmenter the config names."""
    from pseudomask.models import (
        GroundingDinoDetector,
        SamSegmenter,
        build_grounding_dino,
        build_sam,
        resolve_text_encoder,
    )
    from pseudomask.segmenters import BoxSegmenter

    text = resolve_text_encoder(cfg.bert_dir)
    dino = build_grounding_dino(
        cfg.dino_config, cfg.dino_checkpoint, text_encoder=text, random_weights=cfg.random_weights, device=device
    )
    captions = {c: cfg.captions.get(c) or [c] for c in categories}
    detector = GroundingDinoDetector(
        dino,
        captions,
        text_threshold=cfg.text_threshold,
        candidate_threshold=min(cfg.box_threshold, cfg.noise_threshold),
        image_size=cfg.dino_size,
    )
    if cfg.segmenter == "box":
        return detector, BoxSegmenter()
    if cfg.segmenter != "sam":
        raise ValueError(f"unknown segmenter {cfg.segmenter!r}; expected 'sam' or 'box'")
    sam = build_sam(cfg.sam_model, cfg.sam_checkpoint, random_weights=cfg.random_weights, device=device)
    return detector, SamSegmenter(sam, box_chunk=cfg.box_chunk)


def check_weights(cfg: JobConfig) -> None:
    """Fail before touching the dataset when a weight or tokenizer file is missing.

    Raises:
        WeightsError: naming the missing file and the flag that gives it.
    """
    from pseudomask.models import WeightsError, resolve_text_encoder

    if cfg.random_weights:
        return
    need = [("GroundingDINO", "--dino-checkpoint", cfg.dino_checkpoint)]
    if cfg.segmenter == "sam":
        need.append((f"SAM {cfg.sam_model}", "--sam-checkpoint", cfg.sam_checkpoint))
    for name, flag, p in need:
        if not p:
            raise WeightsError(f"{name} checkpoint not given: pass {flag} PATH (or --random-weights for a test run)")
        if not Path(p).is_file():
            raise WeightsError(f"{name} checkpoint not found: {p} ({flag})")
    resolve_text_encoder(cfg.bert_dir)
