"""What the head, pre-training and baseline loops share: parameter groups, the warm-up + cosine schedule,
mixed precision, and one optimiser step (backward, unscale, clip, step, update, schedule).

Each loop keeps what is its own (what a batch is, what is logged, when it stops); the step and the schedule
are the same code, so a fix to either reaches all three.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` (and ``min_ratio`` after it)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    opt: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of ``lr_factor``: step ``s`` runs at ``lr * lr_factor(s, ...)``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, min_ratio))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only, as open_clip's trainer does.

    Gains, biases, embeddings, the temperature and scalar calibrations (the head's map scale and bias)
    keep the meaning of their values, so they are not pulled towards zero.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def amp_setup(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for an ``amp`` choice; mixed precision is for GPUs only.

    ``auto`` is bfloat16 where the GPU supports it (no scaler needed), else float16 with a scaler.
    """
    if device.type != "cuda" or amp == "off":
        return None, False
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


def autocast(dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """CUDA autocast to ``dtype``, or nothing when ``dtype`` is None."""
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


class OptimStep:
    """One optimiser step of a loss: zero the gradients, backward (scaled), unscale, clip, step, schedule.

    Args:
        opt: the optimiser.
        params: the parameters whose gradient norm is clipped (and reported).
        max_norm: clip the global gradient norm to this (``inf``: measure only).
        scaler: a ``GradScaler`` for float16 autocast, or None.
        scheduler: stepped after every optimiser step, or None.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        *,
        max_norm: float = math.inf,
        scaler: torch.amp.GradScaler | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.opt = opt
        self.params = [p for p in params if p.requires_grad]
        self.max_norm = max_norm
        self.scaler = scaler
        self.scheduler = scheduler

    def __call__(self, loss: torch.Tensor) -> float:
        """Take the step; returns the gradient norm before clipping."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(norm)

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group, as the next step will use it."""
        return float(self.opt.param_groups[0]["lr"])
