"""``PretrainConfig``: the options of a pre-training run (the demo backbone's recipe is one of them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    """Options of a pre-training run."""

    steps: int = 400
    """Optimiser steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."""
    warmup: int = 40
    """Warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (not on gains, biases, embeddings, logit scale)."""
    hard_negatives: bool = True
    """Add one hard-negative caption per image."""
    clip_weight: float = 1.0
    """Weight of the global (class-token) contrastive term."""
    dense_weight: float = 0.5
    """Weight of the dense-pooled contrastive term (0 disables it)."""
    tag_weight: float = 1.0
    """Weight of the word-grounding term (0 disables it)."""
    global_words: bool = False
    """Also match the caption words against the global embedding (SigLIP on words)."""
    flip: bool = True
    """Random horizontal flips (captions do not mention left/right)."""
    mask_ratio: float = 0.5
    """Share of patch tokens dropped per image in training (FLIP, Li et al. 2023); evaluation and the saved
    model use all tokens."""
    seed: int = 0
    """Seeds initialisation, batching and flips."""
    time_limit_s: float = 0.0
    """Stop early after this much wall time (the run still saves)."""
    log_every: int = 25
    """Log the loss every this many steps."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto``; on CUDA the forward passes run in bfloat16 autocast."""
    decay_steps: int = 0
    """Horizon of the cosine decay (0: ``steps``); a longer one keeps the rate near its peak."""
