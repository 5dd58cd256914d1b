"""Train a DangerCLIP head on frozen CLIP: ``train(TrainConfig) -> TrainResult`` and ``dangerclip train``.

The run, as the paper does it: frozen CLIP (features from the cache), only the head learns; AdamW with
warm-up and cosine decay, gradient clipping, BCE + 2·focal + dice (``--no-dense``: BCE only), batch 32 for
2 000 steps. Then thresholds are chosen on the validation split, metrics measured on the test split, and
the run ends with ``model.safetensors`` (thresholds and metrics in its card), ``model.onnx`` and
``report.md``.

Resumption is exact (``training.train_state``): the batch order and view choice are pure functions of
(seed, step), and a checkpoint holds the head, optimiser, scheduler, AMP scaler and every RNG state, so an
interrupted and resumed run ends with the same weights as an uninterrupted one. The end of the run
(thresholds, calibration, files) is ``training.finish``.

Run folder::

    <out>/config.json   metrics.jsonl   checkpoints/step_000500.pt   model.safetensors   model.onnx
    <out>/report.md     eval.json       plots/*.png                 cache/ (unless cache_dir is set)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dangerclip.modeling.device import resolve_device, seed_everything, stop_on_signal, torch_threads
from dangerclip.runtime.commandline import exits_2_on_bad_input
from dangerclip.runtime.files import write_json
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.finish import TrainResult, finish
from training.history import MetricsLog
from training.optim import OptimStep, amp_setup, autocast, param_groups, warmup_cosine
from training.sampler import BatchSampler
from training.train_state import load_state, resume_from, save_step

log = logging.getLogger(__name__)

# --- data and model ------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, device: torch.device) -> Any:
    from dangerclip.modeling.factory import create_model

    return create_model(
        cfg.model,
        cfg.pretrained or None,
        image_size=cfg.image_size or None,
        prompts=cfg.categories,
        mode="trained",
        seed=cfg.seed,
        version=cfg.version,
        device=device,
    )


def load_splits(cfg: TrainConfig) -> dict[str, list[Any]]:
    """Rows per split (``train``/``val``/``test``). Bad rows stop the run here, before any model is built."""
    from training.data import assign_splits, load_rows

    cats = cfg.categories
    rows = load_rows(cfg.data, cats, skip_bad=cfg.skip_bad)
    idx = assign_splits(rows)
    split_rows = {s: [rows[i] for i in idx[s]] for s in ("train", "val", "test")}
    if cfg.val_data:
        split_rows["val"] = load_rows(cfg.val_data, cats, skip_bad=cfg.skip_bad)
    if cfg.test_data:
        split_rows["test"] = load_rows(cfg.test_data, cats, skip_bad=cfg.skip_bad)
    if not split_rows["train"]:
        raise ValueError(f"{cfg.data}: the train split is empty")
    if not split_rows["val"]:
        log.warning("no validation rows: thresholds will be chosen on the training split (optimistic)")
    log.info(
        "data: %s", ", ".join(f"{s} {len(r)} ({sum(x.positive for x in r)} positive)" for s, r in split_rows.items())
    )
    return split_rows


def prepare_data(cfg: TrainConfig, model: Any, split_rows: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """Rows per split and their feature caches (built or reused). Undecodable images stop the run here."""
    from training.cache import build_or_load
    from training.data import PLAIN, ViewRecipe

    cats = cfg.categories
    if split_rows is None:
        split_rows = load_splits(cfg)
    card = model.card
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"
    # The jitter draws do not follow the training seed, so runs with other seeds share the cache.
    recipe = ViewRecipe(flip=cfg.flip, color_views=cfg.color_views, grayscale=cfg.grayscale)
    caches = {}
    for s, r in split_rows.items():
        if not r:
            continue
        caches[s] = build_or_load(
            model.backbone,
            r,
            cats,
            card.preprocess,
            tuple(card.grid),
            recipe if s == "train" else PLAIN,
            cache_root,
            s,
            skip_bad=cfg.skip_bad,
            encode_batch=cfg.encode_batch,
            progress=cfg.progress,
        )
    return {"rows": split_rows, "caches": caches}


def _val_step_metrics(model: Any, cache: Any, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    from dangerclip.modeling.losses import danger_loss
    from training import evaluate as E

    pred = E.predict_features(model, cache)
    b = cache.batch(cache.valid_indices)
    model.head.eval()
    with torch.inference_mode():
        out = model.head(b["g"].to(device), b["patches"].to(device))
        losses = danger_loss(
            out.logits.float(),
            out.map_logits.float(),
            b["labels"].to(device),
            b["masks"].to(device),
            b["mask_valid"].to(device),
            weights=cfg.effective_loss_weights,
            focal_alpha=cfg.focal_alpha,
        )
    model.head.train()
    rep = E.evaluate(pred, cfg.categories, {c: 0.5 for c in cfg.categories})
    return {
        **{k: float(v) for k, v in losses.items()},
        "ap": rep["macro"]["ap"],
        "f1@0.5": rep["macro"]["f1"],
        "topk_iou": rep["macro"]["topk_iou"],
        "pointing": rep["macro"]["pointing"],
    }


def train(config: TrainConfig, model: Any = None) -> TrainResult:
    """Train a DangerCLIP head as configured and write the run folder.

    Args:
        config: the run.
        model: an existing trained-mode ``DangerCLIP`` to train (its backbone stays frozen); default: built
            from ``config.model`` / ``config.pretrained`` / ``config.categories`` with ``config.seed``.

    Returns:
        A ``TrainResult``. When the run stops early (``stop_after`` or SIGTERM/SIGINT), a resumable
        checkpoint is written and ``interrupted`` is True; no final model is written.

    Raises:
        ManifestError: bad dataset rows (all of them, with line numbers), unless ``skip_bad``.
        ValueError: an invalid config, or a resume from a checkpoint of another config.
    """
    with torch_threads(config.threads):
        return _train(config, model)


def _train(cfg: TrainConfig, model: Any) -> TrainResult:
    t0 = time.monotonic()
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    split_rows = load_splits(cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg, device) if model is None else _checked(model, cfg, device)
    write_json(out / "config.json", cfg.to_dict())
    data = prepare_data(cfg, model, split_rows)
    model.head.train()
    optim = _Optimisation.build(cfg, model.head, device)
    ckpt = resume_from(cfg, out)
    start = load_state(ckpt, cfg, model, optim.opt, optim.sched, optim.scaler) if ckpt is not None else 0
    result = _run_steps(cfg, model, data["caches"], optim, device, out, start)
    if not result.interrupted:
        finish(cfg, model, data, result)
    result.seconds = time.monotonic() - t0
    return result


def _checked(model: Any, cfg: TrainConfig, device: torch.device) -> Any:
    model = model.to(device)
    if list(model.card.prompts) != list(cfg.categories):
        raise ValueError(f"model prompts {model.card.prompts} differ from config categories {cfg.categories}")
    return model


# --- the steps -----------------------------------------------------------------------------------------


@dataclass
class _Optimisation:
    """AdamW with warm-up and cosine decay, clipping, and mixed precision on a GPU (``training.optim``)."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    step: OptimStep
    amp_dtype: torch.dtype | None

    @classmethod
    def build(cls, cfg: TrainConfig, head: torch.nn.Module, device: torch.device) -> _Optimisation:
        opt = torch.optim.AdamW(param_groups(head, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        sched = warmup_cosine(opt, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
        amp_dtype, use_scaler = amp_setup(cfg.amp, device)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        step = OptimStep(opt, list(head.parameters()), max_norm=max_norm, scaler=scaler, scheduler=sched)
        return cls(opt, sched, scaler, step, amp_dtype)


def _run_steps(
    cfg: TrainConfig,
    model: Any,
    caches: dict[str, Any],
    optim: _Optimisation,
    device: torch.device,
    out: Path,
    start: int,
) -> TrainResult:
    """Steps ``start`` to ``cfg.iterations`` (or until a stop), logging, evaluating and checkpointing."""
    train_cache = caches["train"]
    sampler = BatchSampler(train_cache.valid_indices, cfg.batch_size, train_cache.num_views, cfg.seed)
    mlog = MetricsLog(out, start, cfg.tensorboard)
    bar = _progress_bar(cfg, start)
    window: list[dict[str, float]] = []
    last_loss = float("nan")
    step, interrupted = start, False
    t_steps = time.monotonic()
    try:
        with stop_on_signal() as sig:
            while step < cfg.iterations:
                window.append(_step(cfg, model.head, train_cache, sampler(step), optim, device))
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{window[-1][k]:.3f}" for k in ("loss", "bce", "focal", "dice")})
                if _due(step, cfg.log_every, cfg.iterations):
                    last_loss = _log_window(mlog, step, window, optim.step.lr, time.monotonic() - t_steps)
                if cfg.eval_every and "val" in caches and _due(step, cfg.eval_every, cfg.iterations):
                    mlog.write({"step": step, "split": "val", **_val_step_metrics(model, caches["val"], cfg, device)})
                stop_now = bool(cfg.stop_after and cfg.stop_after <= step < cfg.iterations) or sig["stop"]
                if stop_now or _due(step, cfg.checkpoint_every):
                    save_step(out, step, model, optim.opt, optim.sched, optim.scaler, cfg)
                if stop_now:
                    interrupted = step < cfg.iterations
                    log.warning("stopped at step %d of %d; resume with --resume auto", step, cfg.iterations)
                    break
    finally:
        if bar is not None:
            bar.close()
        mlog.close()
    if window:
        last_loss = float(np.mean([w["loss"] for w in window]))
    seconds = time.monotonic() - t_steps
    log.info("trained %d steps in %.1fs (%.1f ms/step)", step - start, seconds, 1000 * seconds / max(1, step - start))
    return TrainResult(
        out=out,
        checkpoint=None,
        onnx=None,
        report=None,
        steps=step,
        final_loss=last_loss,
        interrupted=interrupted,
        model=model,
    )


def _due(step: int, every: int, last: int = -1) -> bool:
    """Every ``every`` steps (never when 0), and at step ``last``."""
    return bool(every and step % every == 0) or step == last


def _log_window(mlog: MetricsLog, step: int, window: list[dict[str, float]], lr: float, seconds: float) -> float:
    """Write the mean of each term over the steps since the last line; returns the mean loss."""
    rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
    mlog.write({"step": step, "split": "train", "lr": lr, **rec, "time": round(seconds, 3)})
    window.clear()
    return rec["loss"]


def _step(
    cfg: TrainConfig,
    head: torch.nn.Module,
    cache: Any,
    batch: tuple[np.ndarray, np.ndarray],
    optim: _Optimisation,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step on a cached batch; returns its loss terms and gradient norm."""
    from dangerclip.modeling.losses import danger_loss

    idx, views = batch
    b = {k: v.to(device, non_blocking=True) for k, v in cache.batch(idx, views).items()}
    with autocast(optim.amp_dtype):
        o = head(b["g"], b["patches"])
    losses = danger_loss(
        o.logits.float(),
        o.map_logits.float(),
        b["labels"],
        b["masks"],
        b["mask_valid"],
        weights=cfg.effective_loss_weights,
        focal_alpha=cfg.focal_alpha,
    )
    grad_norm = optim.step(losses["loss"])
    return {k: float(v.detach()) for k, v in losses.items()} | {"grad_norm": grad_norm}


def _progress_bar(cfg: TrainConfig, start: int) -> Any:
    if not cfg.progress:
        return None
    from dangerclip.runtime.progress import progress

    # A bar on a terminal; in a log (a pod, `> train.log`) a line with rate, ETA and the losses every minute.
    return progress(cfg.iterations, desc="train", unit="step", initial=start)


# --- `dangerclip train` --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")


@exits_2_on_bad_input("train")
def run(args: argparse.Namespace) -> int:
    """``dangerclip train``: train as the merged config says and print a summary as JSON."""
    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    res = train(cfg)
    summary = {
        "out": str(res.out),
        "steps": res.steps,
        "interrupted": res.interrupted,
        "checkpoint": str(res.checkpoint) if res.checkpoint else None,
        "onnx": str(res.onnx) if res.onnx else None,
        "report": str(res.report) if res.report else None,
        "thresholds": res.thresholds,
        "seconds": round(res.seconds, 1),
    }
    for split in ("val", "test"):
        if split in res.metrics:
            m = res.metrics[split]["macro"]
            summary[split] = {
                k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4)) for k, v in m.items()
            }
    print(json.dumps(summary, indent=1))
    return 3 if res.interrupted else 0
