"""The pre-training loop: the whole CLIP, both towers, on image–caption pairs (``pretrain``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dangerclip.modeling.device import resolve_device
from training.optim import OptimStep, amp_setup, autocast, param_groups, warmup_cosine
from training.pretrain.captions import CaptionData, tag_tokens
from training.pretrain.clip import dense_tokens, encode_text, normalise
from training.pretrain.config import PretrainConfig
from training.pretrain.losses import WordGrounding, contrastive_loss

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a run did: per-step losses and timings."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def summary(self, window: int = 20) -> dict[str, Any]:
        w = max(1, min(window, len(self.losses) // 2 or 1))
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "stopped_early": self.stopped_early,
            "loss_first": float(np.mean(self.losses[:w])) if self.losses else None,
            "loss_last": float(np.mean(self.losses[-w:])) if self.losses else None,
        }


def pretrain(clip: nn.Module, data: CaptionData, cfg: PretrainConfig) -> PretrainResult:
    """Train ``clip`` in place on image–caption pairs.

    AdamW (betas 0.9/0.98, eps 1e-6 as CLIP) on ``training.optim``'s parameter groups, warm-up and cosine
    decay to 10 % over ``decay_steps or steps``, gradients of the CLIP clipped to norm 1, bfloat16 autocast
    on CUDA. The word-grounding module's two scalars train with the CLIP and are not kept.

    Args:
        clip: an open_clip ``CLIP`` (its image size must match the data).
        data: images and tokens from ``load_caption_data`` or ``synthetic_caption_data``.
        cfg: options.

    Returns:
        Per-step losses (the weighted total of the terms) and timings.

    Raises:
        ValueError: every term has weight 0.
    """
    use_tags = cfg.tag_weight > 0 and data.tags is not None
    if cfg.clip_weight <= 0 and cfg.dense_weight <= 0 and not use_tags:
        raise ValueError("every pre-training term has weight 0")
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(data))
    device = resolve_device(cfg.device)
    clip.to(device)
    grounding = WordGrounding().to(device)
    groups = param_groups(clip, cfg.weight_decay)
    groups[1]["params"] = groups[1]["params"] + list(grounding.parameters())
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = warmup_cosine(opt, cfg.decay_steps or cfg.steps, cfg.warmup, 0.1)
    step_fn = OptimStep(opt, list(clip.parameters()), max_norm=1.0, scheduler=sched)
    amp_dtype, _ = amp_setup("bf16", device)
    objective = _Objective(cfg, clip, grounding, tag_tokens().to(device) if use_tags else None, g)
    clip.train()
    res = PretrainResult()
    t0 = time.perf_counter()
    for step, idx in zip(range(cfg.steps), _batches(len(data), bs, g), strict=False):
        x = normalise(data.images[idx].to(device, non_blocking=True))
        if cfg.flip:
            flip = (torch.rand(bs, generator=g) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        lr = step_fn.lr
        with autocast(amp_dtype):
            terms = objective(data, idx, x)
        loss = torch.stack([objective.weights[k] * v for k, v in terms.items()]).sum()
        step_fn(loss)
        with torch.no_grad():
            # As CLIP: the temperature may not exceed 100.
            clip.logit_scale.clamp_(0, math.log(100))
        res.losses.append(float(loss.item()))
        res.steps = step + 1
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            log.info(
                "pretrain step %d/%d loss %.4f (%s) lr %.2e scale %.1f (%.1f s)",
                step + 1,
                cfg.steps,
                res.losses[-1],
                " ".join(f"{k} {v.item():.3f}" for k, v in terms.items()),
                lr,
                float(clip.logit_scale.exp().detach()),
                time.perf_counter() - t0,
            )
        if cfg.time_limit_s and time.perf_counter() - t0 > cfg.time_limit_s:
            log.warning("pretrain: time limit %.0f s reached after %d steps", cfg.time_limit_s, step + 1)
            res.stopped_early = True
            break
    clip.eval().cpu()
    res.seconds = time.perf_counter() - t0
    return res


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices, a fresh permutation whenever the next batch would not fit."""
    perm, pos = torch.randperm(n, generator=g), 0
    while True:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


class _Objective:
    """The weighted terms of one batch: global and dense-pooled InfoNCE, and word grounding."""

    def __init__(
        self,
        cfg: PretrainConfig,
        clip: nn.Module,
        grounding: WordGrounding,
        words: torch.Tensor | None,
        g: torch.Generator,
    ) -> None:
        self.cfg, self.clip, self.grounding, self.words, self.g = cfg, clip, grounding, words, g
        self.weights = {"clip": cfg.clip_weight, "dense": cfg.dense_weight, "words": cfg.tag_weight}
        n_patches = int(clip.visual.grid_size[0] * clip.visual.grid_size[1])
        self.keep = max(1, round(n_patches * (1 - cfg.mask_ratio))) if cfg.mask_ratio > 0 else None

    def __call__(self, data: CaptionData, idx: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, clip, device = self.cfg, self.clip, x.device
        terms: dict[str, torch.Tensor] = {}
        gvec, patches = dense_tokens(clip, x, keep=self.keep, generator=self.g)
        if cfg.clip_weight > 0 or cfg.dense_weight > 0:
            txt, hard = self._captions(data, idx, device)
            scale = clip.logit_scale.exp().clamp(max=100.0)
            if cfg.clip_weight > 0:
                terms["clip"] = contrastive_loss(F.normalize(gvec.float(), dim=-1), txt, hard, scale)
            if cfg.dense_weight > 0:
                pooled = F.normalize(patches.float().mean(1), dim=-1)
                terms["dense"] = contrastive_loss(pooled, txt, hard, scale)
        if self.words is not None and data.tags is not None:
            terms["words"] = self.grounding(
                patches.float(),
                encode_text(clip, self.words).float(),
                data.tags[idx].to(device),
                gvec.float() if cfg.global_words else None,
            )
        return terms

    def _captions(
        self, data: CaptionData, idx: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised caption embeddings ``[B, D]`` and, with hard negatives, theirs."""
        tok = data.tokens[idx].to(device)
        if not self.cfg.hard_negatives:
            return F.normalize(encode_text(self.clip, tok).float(), dim=-1), None
        both = torch.cat([tok, data.hard_tokens[idx].to(device)])
        t_all = F.normalize(encode_text(self.clip, both).float(), dim=-1)
        return t_all[: len(idx)], t_all[len(idx) :]
