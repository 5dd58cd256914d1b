"""Train a DangerCLIP head on frozen CLIP: ``train(TrainConfig) -> TrainResult`` and ``dangerclip train``.

The run, as the paper does it: frozen CLIP (features from the cache), only the head learns; AdamW with
warm-up and cosine decay, gradient clipping, BCE + 2·focal + dice (``--no-dense``: BCE only), batch 32 for
2 000 steps. Then thresholds are chosen on the validation split, metrics measured on the test split, and
the run ends with ``model.safetensors`` (thresholds and metrics in its card), ``model.onnx`` and
``report.md``.

Resumption is exact: the batch order and view choice are pure functions of (seed, step), and a checkpoint
holds the head, optimiser, scheduler, AMP scaler and every RNG state, so an interrupted and resumed run
ends with the same weights as an uninterrupted one.

Run folder::

    <out>/config.json   metrics.jsonl   checkpoints/step_000500.pt   model.safetensors   model.onnx
    <out>/report.md     eval.json       plots/*.png                 cache/ (unless cache_dir is set)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.commandline import exits_2_on_bad_input
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.files import atomic_path, write_json
from training.runtime import resolve_device, seed_everything, stop_on_signal, torch_threads

log = logging.getLogger(__name__)

CKPT_FORMAT = "dangerclip-train-state/1"


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: the run folder.
        checkpoint: ``model.safetensors`` (None when the run stopped early with ``stop_after``).
        onnx: ``model.onnx`` when exported.
        report: ``report.md`` when written.
        steps: optimiser steps done.
        thresholds: per-category score thresholds chosen on val.
        map_thresholds: per-category map thresholds chosen on val (before calibration folding).
        metrics: ``{"val": evaluate(...), "test": evaluate(...)}`` (test absent without a test split).
        final_loss: mean training loss over the last logged window.
        seconds: wall time of this call.
        interrupted: the run stopped before ``iterations`` (``stop_after`` or a signal).
        model: the trained ``DangerCLIP`` (in memory).
    """

    out: Path
    checkpoint: Path | None
    onnx: Path | None
    report: Path | None
    steps: int
    thresholds: dict[str, float] = field(default_factory=dict)
    map_thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    final_loss: float = float("nan")
    seconds: float = 0.0
    interrupted: bool = False
    model: Any = None


# --- schedule, sampling, RNG ---------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BatchSampler:
    """Epoch-shuffled batches as a pure function of (seed, step): resumable without any saved state.

    Batches walk through a stream of per-epoch permutations of ``indices`` (each epoch's permutation is
    seeded by (seed, epoch)); each row gets a view drawn from (seed, step).
    """

    def __init__(self, indices: np.ndarray, batch_size: int, num_views: int, seed: int) -> None:
        if indices.size == 0:
            raise ValueError("no training rows")
        self.indices = np.asarray(indices, np.int64)
        self.batch_size = batch_size
        self.num_views = num_views
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def _epoch(self, e: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, np.random.default_rng([self.seed, e]).permutation(self.indices))
        return self._perm[1]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        n, b = self.indices.size, self.batch_size
        pos, out = step * b, []
        while len(out) < b:
            e, o = divmod(pos, n)
            take = min(b - len(out), n - o)
            out.extend(self._epoch(e)[o : o + take].tolist())
            pos += take
        views = np.random.default_rng([self.seed, step, 1]).integers(0, self.num_views, b)
        return np.asarray(out, np.int64), views


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def amp_setup(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)``. Mixed precision is for GPUs only."""
    if device.type != "cuda" or cfg.amp == "off":
        return None, False
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


def param_groups(head: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and the map's scale/bias keep their values' meaning."""
    decay, no_decay = [], []
    for p in head.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- checkpoints ---------------------------------------------------------------------------------------


def _ckpt_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(_ckpt_dir(out).glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def save_state(path: Path, step: int, model: Any, opt: Any, sched: Any, scaler: Any, cfg: TrainConfig,
               backbone_sha: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def _prune(out: Path, keep: int) -> None:
    ckpts = sorted(_ckpt_dir(out).glob("step_*.pt"))
    for p in ckpts[: max(0, len(ckpts) - max(keep, 1))]:
        p.unlink(missing_ok=True)


# Fields that may differ between an interrupted run and its resumption without changing the result.
_RESUME_FREE = {"resume", "stop_after", "progress", "export", "report", "tensorboard", "checkpoint_every",
                "keep_checkpoints", "threads", "device", "cache_dir", "out", "log_every", "eval_every",
                "skip_bad", "version", "encode_batch", "calibrate_maps", "threshold_target", "min_precision"}


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if diff:
        raise ValueError(
            f"cannot resume from {path}: the config differs in {diff} "
            f"({', '.join(f'{k}: {saved.get(k)!r} -> {now[k]!r}' for k in diff)})"
        )


# --- metrics logging -----------------------------------------------------------------------------------


class MetricsLog:
    """JSON lines in ``metrics.jsonl`` (and TensorBoard scalars when asked)."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out / "metrics.jsonl"
        # On resume, drop what the interrupted run logged after its checkpoint: it is logged again.
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            self.path.write_text("".join(x + "\n" for x in keep) if start_step > 0 else "")
        self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            prefix = rec.get("split", "train")
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, rec["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


# --- the run -------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, device: torch.device) -> Any:
    from dangerclip.factory import create_model

    return create_model(cfg.model, cfg.pretrained or None, prompts=cfg.categories, mode="trained",
                        seed=cfg.seed, version=cfg.version, device=device)


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
    log.info("data: %s", ", ".join(f"{s} {len(r)} ({sum(x.positive for x in r)} positive)"
                                   for s, r in split_rows.items()))
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
            model.backbone, r, cats, card.preprocess, tuple(card.grid), recipe if s == "train" else PLAIN,
            cache_root, s, skip_bad=cfg.skip_bad, encode_batch=cfg.encode_batch, progress=cfg.progress,
        )
    return {"rows": split_rows, "caches": caches}


def _val_step_metrics(model: Any, cache: Any, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    from dangerclip.losses import danger_loss
    from training import evaluate as E

    pred = E.predict_features(model, cache)
    b = cache.batch(cache.valid_indices)
    model.head.eval()
    with torch.inference_mode():
        out = model.head(b["g"].to(device), b["patches"].to(device))
        losses = danger_loss(out.logits.float(), out.map_logits.float(), b["labels"].to(device),
                             b["masks"].to(device), b["mask_valid"].to(device),
                             weights=cfg.effective_loss_weights, focal_alpha=cfg.focal_alpha)
    model.head.train()
    rep = E.evaluate(pred, cfg.categories, {c: 0.5 for c in cfg.categories})
    return {**{k: float(v) for k, v in losses.items()}, "ap": rep["macro"]["ap"], "f1@0.5": rep["macro"]["f1"],
            "topk_iou": rep["macro"]["topk_iou"], "pointing": rep["macro"]["pointing"]}


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


def _train(config: TrainConfig, model: Any) -> TrainResult:
    from dangerclip.losses import danger_loss

    t0 = time.monotonic()
    cfg = config
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    split_rows = load_splits(cfg)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg, device)
    else:
        model = model.to(device)
        if list(model.card.prompts) != list(cfg.categories):
            raise ValueError(f"model prompts {model.card.prompts} differ from config categories {cfg.categories}")
    write_json(out / "config.json", cfg.to_dict())
    data = prepare_data(cfg, model, split_rows)
    caches = data["caches"]
    train_cache = caches["train"]

    head = model.head
    head.train()
    opt = torch.optim.AdamW(param_groups(head, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
    )
    amp_dtype, use_scaler = amp_setup(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    start = 0
    resume_from = None
    if cfg.resume:
        resume_from = latest_checkpoint(out) if cfg.resume == "auto" else Path(cfg.resume)
        if resume_from is None:
            log.info("resume=auto: no checkpoint in %s, starting fresh", _ckpt_dir(out))
    if resume_from is not None:
        # On the CPU: load_state_dict copies onto the head's and optimiser's device, and the RNG states must
        # stay CPU tensors (loading them onto CUDA broke resuming on a GPU).
        st = torch.load(resume_from, map_location="cpu", weights_only=False)
        if st.get("format") != CKPT_FORMAT:
            raise ValueError(f"{resume_from} is not a training checkpoint")
        _check_resumable(st["config"], cfg, resume_from)
        if st["backbone_sha256"] != model.backbone.sha256:
            raise ValueError(f"cannot resume from {resume_from}: it was trained on another backbone")
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"])
        start = int(st["step"])
        log.info("resumed from %s at step %d", resume_from, start)

    sampler = BatchSampler(train_cache.valid_indices, cfg.batch_size, train_cache.num_views, cfg.seed)
    mlog = MetricsLog(out, start, cfg.tensorboard)
    weights = cfg.effective_loss_weights
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="train", unit="step", dynamic_ncols=True)
    window: list[dict[str, float]] = []
    last_loss = float("nan")
    step = start
    interrupted = False
    t_steps = time.monotonic()
    try:
        with stop_on_signal() as sig:
            while step < cfg.iterations:
                idx, views = sampler(step)
                b = {k: v.to(device, non_blocking=True) for k, v in train_cache.batch(idx, views).items()}
                ctx = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()
                with ctx:
                    o = head(b["g"], b["patches"])
                losses = danger_loss(o.logits.float(), o.map_logits.float(), b["labels"], b["masks"],
                                     b["mask_valid"], weights=weights, focal_alpha=cfg.focal_alpha)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(losses["loss"]).backward()
                    scaler.unscale_(opt)
                else:
                    losses["loss"].backward()
                params = [p for p in head.parameters() if p.requires_grad]
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sched.step()
                step += 1
                window.append({k: float(v.detach()) for k, v in losses.items()} | {"grad_norm": float(gnorm)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{window[-1][k]:.3f}" for k in ("loss", "bce", "focal", "dice")})
                if step % cfg.log_every == 0 or step == cfg.iterations:
                    rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    last_loss = rec["loss"]
                    mlog.write({"step": step, "split": "train", "lr": opt.param_groups[0]["lr"], **rec,
                                "time": round(time.monotonic() - t_steps, 3)})
                    window.clear()
                if cfg.eval_every and "val" in caches and (step % cfg.eval_every == 0 or step == cfg.iterations):
                    mlog.write({"step": step, "split": "val", **_val_step_metrics(model, caches["val"], cfg, device)})
                stop_now = bool(cfg.stop_after and step >= cfg.stop_after and step < cfg.iterations) or sig["stop"]
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop_now:
                    save_state(_ckpt_dir(out) / f"step_{step:06d}.pt", step, model, opt, sched, scaler, cfg,
                               model.backbone.sha256)
                    _prune(out, cfg.keep_checkpoints)
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
    train_seconds = time.monotonic() - t_steps
    log.info("trained %d steps in %.1fs (%.1f ms/step)", step - start, train_seconds,
             1000 * train_seconds / max(1, step - start))
    result = TrainResult(out=out, checkpoint=None, onnx=None, report=None, steps=step, final_loss=last_loss,
                         interrupted=interrupted, model=model)
    if interrupted:
        result.seconds = time.monotonic() - t0
        return result
    finish(cfg, model, data, result)
    result.seconds = time.monotonic() - t0
    return result


def finish(cfg: TrainConfig, model: Any, data: dict[str, Any], result: TrainResult) -> None:
    """Thresholds on val, metrics on test, map calibration, checkpoint, ONNX and report."""
    from dangerclip.checkpoint import save_checkpoint
    from training import evaluate as E

    caches = data["caches"]
    cats = cfg.categories
    out = result.out
    val_cache = caches.get("val", caches["train"])
    vp = E.predict_features(model, val_cache)
    thresholds, map_thresholds = E.choose_thresholds(vp, cats, target=cfg.threshold_target,
                                                     min_precision=cfg.min_precision)
    val_rep = E.evaluate(vp, cats, thresholds, map_thresholds)
    metrics: dict[str, Any] = {"val": val_rep}
    served_map_thresholds = dict(map_thresholds)
    if cfg.calibrate_maps:
        served_map_thresholds = calibrate_map_bias(model, map_thresholds)
        # The served maps changed: re-measure val with the folded bias (IoU@0.5 now is IoU at the threshold).
        vp = E.predict_features(model, val_cache)
        metrics["val"] = val_rep = E.evaluate(vp, cats, thresholds, served_map_thresholds)
    tp = None
    if "test" in caches:
        tp = E.predict_features(model, caches["test"])
        metrics["test"] = E.evaluate(tp, cats, thresholds, served_map_thresholds)
    split = "test" if "test" in metrics else "val"
    result.thresholds, result.map_thresholds, result.metrics = thresholds, served_map_thresholds, metrics
    card_m = E.card_metrics(val_rep, metrics.get("test"), served_map_thresholds, "test")
    # The thresholds on the head's own (uncalibrated) map scale, before folding: how far off 0.5 it was.
    card_m["map_thresholds_raw"] = dict(map_thresholds)
    card_m.update({"iterations": result.steps, "dense": cfg.dense, "batch_size": cfg.batch_size,
                   "data": str(cfg.data), "threshold_target": cfg.threshold_target})
    notes = (f"Head trained {result.steps} steps ({'BCE + focal + dice' if cfg.dense else 'BCE only'}) on "
             f"{len(data['rows']['train'])} images; thresholds chosen on val ({cfg.threshold_target}).")
    ckpt = out / "model.safetensors"
    save_checkpoint(model, ckpt, version=cfg.version, thresholds=thresholds, metrics=card_m, trained=True,
                    notes=notes)
    result.checkpoint = ckpt
    write_json(out / "eval.json",
               {"thresholds": thresholds, "map_thresholds": served_map_thresholds, "metrics": metrics})
    log.info("wrote %s; %s F1 %.3f AP %.3f", ckpt, split, metrics[split]["macro"]["f1"],
             metrics[split]["macro"]["ap"])
    if cfg.export:
        from dangerclip.export import export_onnx

        model.cpu()
        result.onnx = export_onnx(model, out / "model.onnx")
    if cfg.report:
        from training.report import write_report

        result.report = write_report(out, cfg, metrics, read_history(out / "metrics.jsonl"),
                                     tp if tp is not None else vp, model.card)


def calibrate_map_bias(model: Any, map_thresholds: dict[str, float]) -> dict[str, float]:
    """Fold the IoU-best map threshold into the head's map bias, so served maps cross 0.5 where it was.

    ``sigmoid(s·a + b) >= t`` is ``sigmoid(s·a + b - logit(t)) >= 0.5``. The bias is shared by all
    categories, so with several categories the mean shift is folded and each category's threshold moves
    accordingly.

    Returns:
        The map thresholds that apply to the served (calibrated) maps: 0.5 for a single category.
    """
    head = model.head
    if not hasattr(head, "map_bias") or not map_thresholds:
        return dict(map_thresholds)

    def logit(p: float) -> float:
        p = min(max(p, 1e-4), 1 - 1e-4)
        return math.log(p / (1 - p))

    shift = float(np.mean([logit(t) for t in map_thresholds.values()]))
    with torch.no_grad():
        head.map_bias.sub_(shift)
    log.info("map calibration: bias shifted by %.3f (val IoU-best thresholds %s)", -shift, map_thresholds)
    return {c: 1.0 / (1.0 + math.exp(-(logit(t) - shift))) for c, t in map_thresholds.items()}


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
    summary = {"out": str(res.out), "steps": res.steps, "interrupted": res.interrupted,
               "checkpoint": str(res.checkpoint) if res.checkpoint else None,
               "onnx": str(res.onnx) if res.onnx else None, "report": str(res.report) if res.report else None,
               "thresholds": res.thresholds, "seconds": round(res.seconds, 1)}
    for split in ("val", "test"):
        if split in res.metrics:
            m = res.metrics[split]["macro"]
            summary[split] = {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4))
                              for k, v in m.items()}
    print(json.dumps(summary, indent=1))
    return 3 if res.interrupted else 0
