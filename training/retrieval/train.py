"""Two-stage DeepFirearm training on a ``dangerclip firearms`` folder, and the ablation table.

Stage 1: a class-weighted linear classifier on the MAC features of the train classes (weights ``max_n / n_k``),
SGD with momentum 0.9 and weight decay 5e-4, as the paper. Stage 2: siamese fine-tuning of the embedding on
pairs — as many positive as negative pairs per class, regenerated every ``pair_every`` epochs, negatives drawn
from the same family half of the time (hard-ish, but no mining, as the paper) — with the double- or single-margin
loss; the epoch with the best val mAP is kept.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dangerclip.modeling.retrieval import EmbeddingNet, build_backbone, double_margin_loss, single_margin_loss
from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD
from dangerclip.runtime.files import atomic_write_text, write_json
from training.retrieval.evaluate import pca, retrieval_metrics

log = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    data: str = ""
    """A ``dangerclip firearms`` folder (images/, retrieval.json)."""
    out: str = ""
    """Run folder (metrics, per-query report, the model)."""
    backbone: str = "small"
    """``small`` (2 CPU cores) or ``vgg16`` (the paper's; GPU)."""
    vgg_weights: str = ""
    """Local torchvision VGG16 weights (ImageNet) for the paper's off-the-shelf start."""
    image_size: int = 96
    """Input side (images are resized, square)."""
    cls_epochs: int = 12
    """Stage-1 epochs (classification)."""
    pair_epochs: int = 8
    """Stage-2 epochs (siamese pairs)."""
    pairs_per_class: int = 24
    """Positive pairs per class per pair draw (as many negatives)."""
    pair_every: int = 2
    """Redraw the pairs every this many epochs."""
    lr: float = 0.01
    """SGD learning rate (stage 2 uses a tenth)."""
    batch_size: int = 32
    """Images (stage 1) or pairs (stage 2) per step."""
    seed: int = 0
    """Seed of the initialisation, the pairs and the augmentation."""
    threads: int = 0
    """torch CPU threads (0: default)."""


def _load(paths: list[Path], size: int) -> torch.Tensor:
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) / 255 for p in paths])
    x = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@dataclass
class Data:
    classes: dict[str, list[str]]
    x: dict[str, torch.Tensor]  # per class: [n, 3, S, S]
    family: dict[str, str]
    queries: dict[str, list[int]]


def load_data(cfg: RetrievalConfig) -> Data:
    root = Path(cfg.data)
    split = json.loads((root / "retrieval.json").read_text())
    family = {m["name"]: m["family"] for m in json.loads((root / "catalogue.json").read_text())}
    x = {}
    for part in split["classes"].values():
        for c in part:
            x[c] = _load(sorted((root / "images" / c).glob("*.jpg")), cfg.image_size)
    return Data(split["classes"], x, family, {k: list(v) for k, v in split["queries"].items()})


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5) * 0.4
    return x * gain


@torch.no_grad()
def embed_all(net: torch.nn.Module, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    net.eval()
    return torch.cat([net(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def evaluate(embed: Any, data: Data, part: str, dims: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """mAP / CMC of ``part``'s classes: 2 queries per class, the rest the database; PCA at each of ``dims``
    (0: none)."""
    db, dbl, q, ql = [], [], [], []
    for k, c in enumerate(data.classes[part]):
        e = embed(data.x[c])
        qi = set(data.queries[c])
        for i in range(len(e)):
            (q if i in qi else db).append(e[i])
            (ql if i in qi else dbl).append(k)
    dbv, qv = np.stack(db), np.stack(q)
    out = {}
    for d in dims:
        a, b = (dbv, qv) if d == 0 else pca(dbv, qv, d)
        out[str(d or dbv.shape[1])] = retrieval_metrics(a, np.array(dbl), b, np.array(ql))
    return out


def stage1(net: EmbeddingNet, data: Data, cfg: RetrievalConfig) -> None:
    """Class-weighted classification on the train classes."""
    train = data.classes["train"]
    x = torch.cat([data.x[c] for c in train])
    y = torch.cat([torch.full((len(data.x[c]),), k) for k, c in enumerate(train)])
    counts = torch.bincount(y).float()
    weight = counts.max() / counts
    net.classifier = torch.nn.Linear(net.dim, len(train))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.cls_epochs))
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.cls_epochs):
        net.train()
        order = torch.randperm(len(y), generator=g)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(net.classifier(net.pooled(_augment(x[b], g))), y[b], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        log.info("stage 1 epoch %d: loss %.3f", epoch + 1, float(np.mean(losses)))
    net.classifier = None


def _pairs(data: Data, cfg: RetrievalConfig, rng: random.Random) -> list[tuple[str, int, str, int, bool]]:
    train = data.classes["train"]
    out = []
    for c in train:
        n = len(data.x[c])
        same_family = [o for o in train if o != c and data.family[o] == data.family[c]]
        for _ in range(cfg.pairs_per_class):
            i, j = rng.sample(range(n), 2)
            out.append((c, i, c, j, True))
            pool = same_family if same_family and rng.random() < 0.5 else [o for o in train if o != c]
            o = rng.choice(pool)
            out.append((c, rng.randrange(n), o, rng.randrange(len(data.x[o])), False))
    rng.shuffle(out)
    return out


def stage2(net: EmbeddingNet, data: Data, cfg: RetrievalConfig, loss_name: str) -> dict[str, Any]:
    """Siamese fine-tuning; the epoch with the best val mAP is kept."""
    loss_fn = double_margin_loss if loss_name == "double" else single_margin_loss
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr / 10, momentum=0.9, weight_decay=5e-4)
    rng = random.Random(f"pairs:{cfg.seed}")
    g = torch.Generator().manual_seed(cfg.seed + 1)
    best = (-1.0, copy.deepcopy(net.state_dict()), 0)
    pairs: list[tuple[str, int, str, int, bool]] = []
    history = []
    for epoch in range(cfg.pair_epochs):
        if epoch % cfg.pair_every == 0:
            pairs = _pairs(data, cfg, rng)
        net.train()
        for i in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[i : i + cfg.batch_size]
            a = torch.stack([data.x[c][k] for c, k, _, _, _ in chunk])
            b = torch.stack([data.x[c][k] for _, _, c, k, _ in chunk])
            same = torch.tensor([s for *_, s in chunk])
            loss = loss_fn(net.embed(_augment(a, g)), net.embed(_augment(b, g)), same)
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = evaluate(lambda x: embed_all(net, x), data, "val")
        m = next(iter(val.values()))["mAP"]
        history.append({"epoch": epoch + 1, "val_mAP": m})
        log.info("stage 2 (%s) epoch %d: val mAP %.3f", loss_name, epoch + 1, m)
        if m > best[0]:
            best = (m, copy.deepcopy(net.state_dict()), epoch + 1)
    net.load_state_dict(best[1])
    return {"history": history, "best_epoch": best[2], "best_val_mAP": best[0]}


def new_net(cfg: RetrievalConfig) -> EmbeddingNet:
    torch.manual_seed(cfg.seed)
    backbone, dim = build_backbone(cfg.backbone, cfg.vgg_weights or None)
    return EmbeddingNet(backbone, dim)


ROWS = (
    ("off-the-shelf MAC", False, None),
    ("retrieval, single margin", False, "single"),
    ("retrieval, double margin", False, "double"),
    ("classification only", True, None),
    ("classification + double margin", True, "double"),
)
PAPER = {  # Firearm 14k test, D = 512: mAP / rank-1 (DeepFirearm, Table 2)
    "off-the-shelf MAC": (31.1, 83.75),
    "retrieval, single margin": (35.1, 80.0),
    "retrieval, double margin": (47.1, 87.5),
    "classification only": (65.4, 92.5),
    "classification + double margin": (68.4, 95.0),
}


def ablation(cfg: RetrievalConfig, clip: bool = True) -> str:
    """The paper's ablation on the synthetic set; writes ``ablation.json`` and ``ablation.md``, returns the table."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    dims = (0, 128, 64, 32)
    rows = []
    stage1_state = None
    for name, cls, pair_loss in ROWS:
        t0 = time.perf_counter()
        net = new_net(cfg)
        info: dict[str, Any] = {}
        if cls:
            if stage1_state is None:
                stage1(net, data, cfg)
                stage1_state = copy.deepcopy(net.state_dict())
            else:
                net.load_state_dict(stage1_state)
        if pair_loss:
            info = stage2(net, data, replace(cfg), pair_loss)
        res = evaluate(lambda x, n=net: embed_all(n, x), data, "test", dims)
        rows.append({"row": name, "seconds": round(time.perf_counter() - t0, 1), "test": res, **info})
        full = next(iter(res.values()))
        log.info("%s: test mAP %.3f, rank-1 %.3f", name, full["mAP"], full["rank1"])
    if clip:
        rows.append(_clip_row(data, dims))
    write_json(out / "ablation.json", rows, indent=1)
    table = _table(rows)
    atomic_write_text(out / "ablation.md", table + "\n")
    return table


def _clip_row(data: Data, dims: tuple[int, ...]) -> dict[str, Any]:
    from dangerclip.modeling.factory import create_model

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo_backbone.safetensors"
    model = create_model("demo", pretrained=str(demo)).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    cmean = torch.tensor(model.card.preprocess.mean).view(1, 3, 1, 1)
    cstd = torch.tensor(model.card.preprocess.std).view(1, 3, 1, 1)
    size = model.card.preprocess.image_size

    @torch.no_grad()
    def embed(x: torch.Tensor) -> np.ndarray:
        img = x * std + mean  # back to [0, 1], then CLIP's own normalisation and size
        img = F.interpolate(img, size=(size, size), mode="bicubic", align_corners=False)
        g, _ = model.backbone.encode_dense((img - cmean) / cstd)
        return g.numpy()

    t0 = time.perf_counter()
    res = evaluate(embed, data, "test", dims)
    return {"row": "frozen CLIP (demo backbone)", "seconds": round(time.perf_counter() - t0, 1), "test": res}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Synthetic fine-grained firearms, test classes disjoint from training; mAP and rank-1 (%) at full "
        "dimension and after PCA.",
        "",
        "| row | mAP | rank-1 | rank-8 | mAP @128 | mAP @32 | paper mAP / R@1 (Firearm 14k) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["test"]
        full = next(iter(t.values()))
        paper = PAPER.get(r["row"])
        p = f"{paper[0]} / {paper[1]}" if paper else "–"
        lines.append(
            f"| {r['row']} | {100 * full['mAP']:.1f} | {100 * full['rank1']:.1f} | {100 * full['rank8']:.1f} | "
            f"{100 * t.get('128', full)['mAP']:.1f} | {100 * t.get('32', full)['mAP']:.1f} | {p} |"
        )
    return "\n".join(lines)
