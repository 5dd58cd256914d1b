"""Resumable training state: what a step checkpoint of the head holds, where they live, when one may resume.

A checkpoint holds the head, optimiser, scheduler, AMP scaler and every RNG state; the batch order is a
pure function of (seed, step) (``training.sampler``), so a resumed run ends with the same weights as an
uninterrupted one. Checkpoints are ``<out>/checkpoints/step_000500.pt``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.runtime.files import atomic_path
from training.config import TrainConfig

log = logging.getLogger(__name__)

CKPT_FORMAT = "dangerclip-train-state/1"

RESUME_FREE = {
    "resume",
    "stop_after",
    "progress",
    "export",
    "report",
    "tensorboard",
    "checkpoint_every",
    "keep_checkpoints",
    "threads",
    "device",
    "cache_dir",
    "out",
    "log_every",
    "eval_every",
    "skip_bad",
    "version",
    "encode_batch",
    "calibrate_maps",
    "threshold_target",
    "min_precision",
}
"""Config fields that may differ between an interrupted run and its resumption without changing the result."""


def rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's (and CUDA's) global RNG states."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (the torch states as CPU tensors)."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest step checkpoint of a run folder, or None."""
    ckpts = sorted(checkpoint_dir(out).glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def save_state(
    path: Path, step: int, model: Any, opt: Any, sched: Any, scaler: Any, cfg: TrainConfig, backbone_sha: str
) -> None:
    """Write a resumable checkpoint of ``step`` atomically."""
    state = {
        "format": CKPT_FORMAT,
        "step": step,
        "head": model.head.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "backbone_sha256": backbone_sha,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_step(out: Path, step: int, model: Any, opt: Any, sched: Any, scaler: Any, cfg: TrainConfig) -> None:
    """Checkpoint ``step`` into the run folder and keep only the newest ``cfg.keep_checkpoints``."""
    save_state(checkpoint_dir(out) / f"step_{step:06d}.pt", step, model, opt, sched, scaler, cfg, model.backbone.sha256)
    ckpts = sorted(checkpoint_dir(out).glob("step_*.pt"))
    for p in ckpts[: max(0, len(ckpts) - max(cfg.keep_checkpoints, 1))]:
        p.unlink(missing_ok=True)


def resume_from(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint ``cfg.resume`` names: none, the newest in ``out`` (``auto``), or a path."""
    if not cfg.resume:
        return None
    path = latest_checkpoint(out) if cfg.resume == "auto" else Path(cfg.resume)
    if path is None:
        log.info("resume=auto: no checkpoint in %s, starting fresh", checkpoint_dir(out))
    return path


def load_state(path: Path, cfg: TrainConfig, model: Any, opt: Any, sched: Any, scaler: Any) -> int:
    """Restore a checkpoint into the head, optimiser, scheduler, scaler and RNGs; returns its step.

    Raises:
        ValueError: not a training checkpoint, another config (beyond ``RESUME_FREE``), or another backbone.
    """
    # On the CPU: load_state_dict copies onto the head's and optimiser's device, and the RNG states must
    # stay CPU tensors (loading them onto CUDA broke resuming on a GPU).
    st = torch.load(path, map_location="cpu", weights_only=False)
    if st.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint")
    check_resumable(st["config"], cfg, path)
    if st["backbone_sha256"] != model.backbone.sha256:
        raise ValueError(f"cannot resume from {path}: it was trained on another backbone")
    model.head.load_state_dict(st["head"])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if scaler is not None and st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    set_rng_state(st["rng"])
    log.info("resumed from %s at step %d", path, int(st["step"]))
    return int(st["step"])


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Raise ``ValueError`` naming every field (outside ``RESUME_FREE``) that differs from the saved config."""
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
    if diff:
        raise ValueError(
            f"cannot resume from {path}: the config differs in {diff} "
            f"({', '.join(f'{k}: {saved.get(k)!r} -> {now[k]!r}' for k in diff)})"
        )
