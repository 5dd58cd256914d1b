"""What pre-training learnt: held-out image→caption retrieval, and a linear probe on the patch tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.metrics import roc_auc
from training.pretrain.captions import CaptionData, read_caption_rows
from training.pretrain.clip import dense_tokens, encode_text, normalise
from training.pretrain.losses import contrastive_loss


@torch.no_grad()
def contrastive_eval(clip: nn.Module, data: CaptionData, batch_size: int = 64) -> dict[str, float]:
    """Held-out retrieval: image→caption top-1 accuracy within batches, and the hard-negative accuracy.

    Returns:
        ``{"retrieval_top1", "hard_negative_acc", "loss"}``; hard-negative accuracy is the share of images
        closer to their own caption than to its noun-swapped version (0.5 is chance).
    """
    clip.eval()
    top1, hard_ok, losses, n = 0, 0, [], 0
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        img = F.normalize(clip.encode_image(normalise(data.images[sl])), dim=-1)
        txt = F.normalize(encode_text(clip, data.tokens[sl]), dim=-1)
        hard = F.normalize(encode_text(clip, data.hard_tokens[sl]), dim=-1)
        sim = img @ txt.t()
        top1 += int((sim.argmax(1) == torch.arange(len(img))).sum())
        hard_ok += int(((img * txt).sum(1) > (img * hard).sum(1)).sum())
        losses.append(float(contrastive_loss(img, txt, hard, clip.logit_scale.exp())) * len(img))
        n += len(img)
    return {"retrieval_top1": top1 / n, "hard_negative_acc": hard_ok / n, "loss": sum(losses) / n}


@torch.no_grad()
def patch_features(
    clip: nn.Module,
    manifest: str | Path,
    *,
    category: str = "weapon",
    limit: int = 200,
    splits: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense patch tokens and patch labels for the rows of a synthetic manifest.

    Returns:
        ``feats [M, N, D]`` float32, ``cover [M, N]`` the fraction of each patch covered by the category's
        exact mask, and ``image_label [M]``.
    """
    manifest = Path(manifest)
    rows = read_caption_rows(manifest, splits)[:limit]
    size = int(
        clip.visual.image_size[0] if isinstance(clip.visual.image_size, (tuple, list)) else clip.visual.image_size
    )
    gh, gw = clip.visual.grid_size
    feats, covers, labels = [], [], []
    clip.eval()
    for s in range(0, len(rows), 64):
        chunk = rows[s : s + 64]
        imgs = np.stack(
            [np.asarray(Image.open(manifest.parent / r["image"]).convert("RGB").resize((size, size))) for r in chunk]
        )
        _, p = dense_tokens(clip, normalise(torch.from_numpy(imgs)))
        feats.append(p.numpy().astype(np.float32))
        for r in chunk:
            m = np.asarray(
                Image.open(manifest.parent / r["mask"][category]).convert("L").resize((size, size)),
                np.float32,
            )
            m = (m > 127).astype(np.float32)
            covers.append(m.reshape(gh, size // gh, gw, size // gw).mean(axis=(1, 3)).reshape(-1))
            labels.append(int(r["labels"][category]))
    return np.concatenate(feats), np.stack(covers), np.asarray(labels)


def linear_probe(
    feats: np.ndarray,
    cover: np.ndarray,
    *,
    on: float = 0.5,
    train_fraction: float = 0.5,
    seed: int = 0,
    steps: int = 300,
) -> dict[str, float]:
    """Logistic regression on frozen patch tokens (scikit-learn's): weapon patches vs all other patches.

    Patches covered at least ``on`` are positive, uncovered patches negative, partly covered ones are left
    out. The probe trains on the first ``train_fraction`` of the images and is scored on the rest, so the
    AUROC measures features, not memorised images. Features are standardised on the training patches;
    positives are weighted up to balance the classes, and the weights carry an L2 penalty of 1e-3 per unit
    of mean loss.

    Args:
        feats: ``[M, N, D]`` patch tokens.
        cover: ``[M, N]`` mask coverage per patch.
        seed: the solver's random state.
        steps: most L-BFGS iterations.

    Returns:
        ``{"auroc", "n_train_patches", "n_test_patches", "positive_rate"}``.
    """
    from sklearn.linear_model import LogisticRegression

    m = feats.shape[0]
    cut = max(1, int(m * train_fraction))

    def xy(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        f, c = feats[sl].reshape(-1, feats.shape[-1]), cover[sl].reshape(-1)
        keep = (c >= on) | (c == 0)
        return f[keep].astype(np.float64), (c[keep] >= on).astype(np.int64)

    xtr, ytr = xy(slice(0, cut))
    xte, yte = xy(slice(cut, m))
    mu, sd = xtr.mean(0), xtr.std(0, ddof=1) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    rate = ytr.mean()
    weight = np.where(ytr == 1, (1 - rate) / max(rate, 1e-6), 1.0)
    # scikit-learn minimises C * sum(w_i * loss_i) + |w|^2 / 2: C = 500 / n is mean(w_i * loss_i) + 1e-3 |w|^2.
    clf = LogisticRegression(C=500.0 / len(ytr), max_iter=steps, random_state=seed)
    clf.fit(xtr, ytr, sample_weight=weight)
    return {
        "auroc": roc_auc(clf.decision_function(xte), yte),
        "n_train_patches": int(len(ytr)),
        "n_test_patches": int(len(yte)),
        "positive_rate": float(yte.mean()),
    }


def probe(clip: nn.Module, manifest: str | Path, *, limit: int = 200, category: str = "weapon") -> dict[str, float]:
    """``linear_probe`` on ``limit`` held-out (``val``/``test``) images of a synthetic manifest."""
    feats, cover, _ = patch_features(clip, manifest, category=category, limit=limit, splits=("val", "test"))
    return linear_probe(feats, cover)
