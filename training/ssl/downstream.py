"""Downstream protocols on a pre-trained backbone: linear probe and full fine-tuning, then calibration.

- **Linear probe**: scikit-learn's multinomial logistic regression on frozen, L2-normalised features (C chosen on
  val). The standard SSL read-out.
- **Fine-tuning**: the whole network with a linear head, the head at 10x the backbone's learning rate, crop and
  flip augmentation, model chosen by val accuracy.
- **Calibration**: temperature scaling on the val logits (one scalar, NLL), expected calibration error before and
  after; the confidence cut points of the served head: ``high`` where val accuracy among predictions at or above
  it reaches 95 %, ``medium`` 80 %.
- **Figures**: accuracy, per-class precision and recall, a confusion matrix plot and a reliability diagram.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dangerclip.modeling.typenet import TypeClassifier
from dangerclip.runtime.progress import progress
from training.ssl.data import ImageSet, Item
from training.ssl.pretrain import eval_transform, features, train_transform

log = logging.getLogger(__name__)


def linear_probe(
    backbone: nn.Module, train: list[Item], val: list[Item], size: int, device: torch.device
) -> tuple[Any, dict[str, Any]]:
    """A logistic regression on frozen features; returns it and its val accuracy per C tried."""
    from sklearn.linear_model import LogisticRegression

    xtr = features(backbone, train, size, device).numpy()
    xva = features(backbone, val, size, device).numpy()
    ytr = np.array([i.label for i in train])
    yva = np.array([i.label for i in val])
    best: tuple[float, Any] = (-1.0, None)
    tried = {}
    for c in (0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr, ytr)
        acc = float((clf.predict(xva) == yva).mean())
        tried[str(c)] = acc
        if acc > best[0]:
            best = (acc, clf)
    return best[1], {"val_accuracy_by_C": tried}


def probe_classifier(backbone: nn.Module, clf: Any, feature_dim: int, n_classes: int) -> TypeClassifier:
    """The probe as a :class:`TypeClassifier` (normalised features → the regression's weights), for export."""

    class _Normalised(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.inner(x), dim=-1)

    model = TypeClassifier(_Normalised(backbone), feature_dim, n_classes)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    return model


def finetune(
    model: TypeClassifier,
    train: list[Item],
    val: list[Item],
    size: int,
    device: torch.device,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place; keeps the epoch with the best val accuracy."""
    ds = ImageSet(train, train_transform(size))
    opt = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters(), "lr": lr},
            {"params": model.head.parameters(), "lr": lr * 10},
        ],
        weight_decay=0.05,
    )
    counts = np.bincount([i.label for i in train], minlength=model.head.out_features).astype(np.float32)
    weight = torch.as_tensor(counts.max() / np.maximum(counts, 1), device=device)
    steps = max(1, math.ceil(len(ds) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr * 10], total_steps=steps * epochs)
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, None)
    history = []
    bar = progress(steps * epochs, desc="fine-tune", unit="step")
    model.to(device)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(ds), generator=gen).tolist()
        for s in range(steps):
            batch = [ds[i] for i in order[s * batch_size : (s + 1) * batch_size]]
            x = torch.stack([b[0] for b in batch]).to(device)
            y = torch.tensor([b[1] for b in batch], device=device)
            loss = F.cross_entropy(model(x), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
        acc = accuracy(logits(model, val, size, device), np.array([i.label for i in val]))
        history.append({"epoch": epoch + 1, "val_accuracy": acc})
        if acc > best[0]:
            best = (acc, {k: v.detach().clone() for k, v in model.state_dict().items()})
    bar.close()
    if best[1] is not None:
        model.load_state_dict(best[1])
    return {"epochs": history, "best_val_accuracy": best[0]}


@torch.no_grad()
def logits(model: nn.Module, items: list[Item], size: int, device: torch.device, batch: int = 128) -> np.ndarray:
    model.eval()
    ds = ImageSet(items, eval_transform(size))
    out = []
    for i in range(0, len(ds), batch):
        x = torch.stack([ds[j][0] for j in range(i, min(i + batch, len(ds)))]).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy(lg: np.ndarray, y: np.ndarray) -> float:
    return float((lg.argmax(1) == y).mean()) if len(y) else 0.0


def softmax(lg: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = lg / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(lg: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the val NLL (a bounded 1-D search: a convex problem in log T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(lg, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.005), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-class probability (equal-width bins)."""
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(total)


def confidence_cuts(p: np.ndarray, y: np.ndarray, targets: dict[str, float] | None = None) -> dict[str, float]:
    """Per level, the lowest probability cut at which the predictions at or above it are right often enough
    (``high``: 95 %, ``medium``: 80 % by default) on held-out data; 1.01 where no cut reaches it."""
    targets = targets or {"high": 0.95, "medium": 0.80}
    conf, right = p.max(1), p.argmax(1) == y
    order = np.argsort(-conf)
    cum = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    cuts = {}
    for level, want in targets.items():
        ok = np.nonzero(cum >= want)[0]
        cuts[level] = float(conf[order][ok.max()]) if len(ok) else 1.01
    cuts["medium"] = min(cuts["medium"], cuts["high"])
    return cuts


def report(lg: np.ndarray, y: np.ndarray, classes: list[str], temperature: float = 1.0) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, the confusion matrix and ECE at ``temperature``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = lg.argmax(1)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))), zero_division=0)
    return {
        "accuracy": accuracy(lg, y),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "n": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),
        "ece": ece(softmax(lg, temperature), y),
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, n * 0.35), max(4.5, n * 0.32)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(p_before: np.ndarray, p_after: np.ndarray, y: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    edges = np.linspace(0, 1, 11)
    for p, name in ((p_before, "before"), (p_after, "after temperature")):
        conf, right = p.max(1), p.argmax(1) == y
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (conf > lo) & (conf <= hi)
            if m.any():
                xs.append(float(conf[m].mean()))
                ys.append(float(right[m].mean()))
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {ece(p, y):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
