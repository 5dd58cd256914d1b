"""Two-stage DeepFirearm training on a retrieval set, the served embedder, and the ablation table.

Stage 1: a class-weighted linear classifier on the MAC features of the train classes (weights ``max_n / n_k``),
SGD with momentum 0.9 and weight decay 5e-4, as the paper. Stage 2: siamese fine-tuning of the embedding on
pairs — as many positive as negative pairs per class, regenerated every ``pair_every`` epochs, negatives drawn
from the same family half of the time where families are known (hard-ish, but no mining, as the paper) — with the
double- or single-margin loss; the epoch with the best val mAP is kept. ``train`` does both for the served model
(resumable, with progress), reports per query, draws a retrieval grid, calibrates the card's match distance on
val pairs and exports ``embedder.onnx``; ``ablation`` trains the paper's rows.

Images are held decoded at ``image_size`` as uint8 (Firearm 14k at 224 px: about 2 GB) and normalised per batch.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dangerclip.modeling.retrieval import EmbeddingNet, build_backbone, double_margin_loss, single_margin_loss
from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from dangerclip.runtime.files import atomic_path, atomic_write_text, write_json
from dangerclip.runtime.preprocess import load_image, resize_and_crop
from dangerclip.runtime.progress import progress
from training.firearms.readers import read_retrieval_set
from training.retrieval.evaluate import pca, retrieval_metrics

log = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    data: str = ""
    """A retrieval set: a ``dangerclip firearms`` folder, Firearm 14k's release (``train/ val/ test/``) or a folder
    per class."""
    out: str = ""
    """Run folder (metrics, per-query report, the model)."""
    backbone: str = "small"
    """``small`` (2 CPU cores) or ``vgg16`` (the paper's; GPU)."""
    vgg_weights: str = ""
    """Local torchvision VGG16 weights (ImageNet) for the paper's off-the-shelf start."""
    image_size: int = 96
    """Input side (shortest side resized, centre crop)."""
    cls_epochs: int = 12
    """Stage-1 epochs (classification)."""
    pair_epochs: int = 8
    """Stage-2 epochs (siamese pairs)."""
    pairs_per_class: int = 24
    """Positive pairs per class per pair draw (as many negatives)."""
    pair_every: int = 2
    """Redraw the pairs every this many epochs."""
    pair_loss: str = "double"
    """Stage-2 loss of ``retrieval train``: ``double`` (the paper's) or ``single`` (the contrastive baseline)."""
    lr: float = 0.01
    """SGD learning rate (stage 2 uses a tenth)."""
    batch_size: int = 32
    """Images (stage 1) or pairs (stage 2) per step."""
    version: str = "0.1.0"
    """``retrieval train``: the embedder's version, carried into every match."""
    match_precision: float = 0.9
    """``retrieval train``: the card's match distance is the largest at which val query-database pairs closer
    than it are the same model with this precision."""
    seed: int = 0
    """Seed of the initialisation, the pairs and the augmentation."""
    threads: int = 0
    """torch CPU threads (0: default)."""

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _load(paths: list[Path], pcfg: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[n, 3, S, S]``: the serving half's geometry (``resize_and_crop``), so the export sees what it saw."""
    arr = np.stack([np.asarray(resize_and_crop(load_image(p), pcfg), np.uint8) for p in paths])
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 images → float, ImageNet-normalised (what :class:`EmbeddingNet` takes)."""
    return (x.float() / 255 - _MEAN) / _STD


@dataclass
class Data:
    classes: dict[str, list[str]]
    x: dict[str, torch.Tensor]  # per class: uint8 [n, 3, S, S]
    family: dict[str, str]
    queries: dict[str, list[int]]
    paths: dict[str, list[Path]]


def load_data(cfg: RetrievalConfig) -> Data:
    rs = read_retrieval_set(cfg.data, seed=cfg.seed)
    log.info("%s at %s: %s", rs.layout, cfg.data, rs.counts())
    x = {c: _load(rs.images[c], cfg.preprocess) for cs in rs.classes.values() for c in cs}
    return Data(rs.classes, x, rs.family, rs.queries, rs.images)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 images → normalised, randomly flipped and with a random gain."""
    x = normalise(x)
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5) * 0.4
    return x * gain


@torch.no_grad()
def embed_all(net: torch.nn.Module, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    net.eval()
    return torch.cat([net(normalise(x[i : i + batch])) for i in range(0, len(x), batch)]).numpy()


@dataclass
class Split:
    """One split's embeddings as the protocol uses them: the database, the queries, their classes and files."""

    db: np.ndarray
    db_labels: np.ndarray
    db_paths: list[Path]
    q: np.ndarray
    q_labels: np.ndarray
    q_paths: list[Path]


def embed_split(embed: Callable[[torch.Tensor], np.ndarray], data: Data, part: str) -> Split:
    """``part``'s classes embedded: each class's queries to the queries, the rest to the database."""
    db, dbl, dbp, q, ql, qp = [], [], [], [], [], []
    for k, c in enumerate(data.classes[part]):
        e = embed(data.x[c])
        qi = set(data.queries.get(c, []))
        for i in range(len(e)):
            into = (q, ql, qp) if i in qi else (db, dbl, dbp)
            into[0].append(e[i])
            into[1].append(k)
            into[2].append(data.paths[c][i])
    return Split(np.stack(db), np.array(dbl), dbp, np.stack(q), np.array(ql), qp)


def evaluate(embed: Any, data: Data, part: str, dims: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """mAP / CMC of ``part``'s classes: each class's queries against the rest; PCA at each of ``dims`` (0: none)."""
    sp = embed_split(embed, data, part)
    out = {}
    for d in dims:
        a, b = (sp.db, sp.q) if d == 0 else pca(sp.db, sp.q, d)
        out[str(d or sp.db.shape[1])] = retrieval_metrics(a, sp.db_labels, b, sp.q_labels)
    return out


Checkpoint = Callable[[dict[str, Any]], None]
"""Called at the end of every epoch with the state to resume from."""


def stage1(
    net: EmbeddingNet,
    data: Data,
    cfg: RetrievalConfig,
    resume: dict[str, Any] | None = None,
    save: Checkpoint | None = None,
) -> None:
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
    start = 0
    if resume is not None:
        net.load_state_dict(resume["net"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        g.set_state(resume["gen"])
        start = resume["epoch"]
    bar = progress(cfg.cls_epochs, desc="retrieval stage 1", unit="epoch", initial=start)
    for epoch in range(start, cfg.cls_epochs):
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
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        bar.update()
        if save is not None:
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
            save({**state, "gen": g.get_state(), "epoch": epoch + 1})
    bar.close()
    net.classifier = None


def _pairs(data: Data, cfg: RetrievalConfig, rng: random.Random) -> list[tuple[str, int, str, int, bool]]:
    train = data.classes["train"]
    out = []
    for c in train:
        n = len(data.x[c])
        same_family = [o for o in train if o != c and data.family.get(o) == data.family.get(c)]
        for _ in range(cfg.pairs_per_class):
            i, j = rng.sample(range(n), 2)
            out.append((c, i, c, j, True))
            pool = same_family if same_family and rng.random() < 0.5 else [o for o in train if o != c]
            o = rng.choice(pool)
            out.append((c, rng.randrange(n), o, rng.randrange(len(data.x[o])), False))
    rng.shuffle(out)
    return out


def stage2(
    net: EmbeddingNet,
    data: Data,
    cfg: RetrievalConfig,
    loss_name: str,
    resume: dict[str, Any] | None = None,
    save: Checkpoint | None = None,
) -> dict[str, Any]:
    """Siamese fine-tuning; the epoch with the best val mAP is kept."""
    if loss_name not in ("double", "single"):
        raise ValueError(f"unknown pair loss {loss_name!r}; choose double or single")
    loss_fn = double_margin_loss if loss_name == "double" else single_margin_loss
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr / 10, momentum=0.9, weight_decay=5e-4)
    rng = random.Random(f"pairs:{cfg.seed}")
    g = torch.Generator().manual_seed(cfg.seed + 1)
    best = (-1.0, copy.deepcopy(net.state_dict()), 0)
    pairs: list[tuple[str, int, str, int, bool]] = []
    history: list[dict[str, Any]] = []
    start = 0
    if resume is not None:
        net.load_state_dict(resume["net"])
        opt.load_state_dict(resume["opt"])
        g.set_state(resume["gen"])
        rng.setstate(resume["rng"])
        best, pairs, history, start = resume["best"], resume["pairs"], resume["history"], resume["epoch"]
    bar = progress(cfg.pair_epochs, desc=f"retrieval stage 2 ({loss_name})", unit="epoch", initial=start)
    for epoch in range(start, cfg.pair_epochs):
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
        bar.set_postfix(val_mAP=f"{m:.3f}")
        bar.update()
        if m > best[0]:
            best = (m, copy.deepcopy(net.state_dict()), epoch + 1)
        if save is not None:
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "gen": g.get_state(), "rng": rng.getstate()}
            save({**state, "best": best, "pairs": pairs, "history": history, "epoch": epoch + 1})
    bar.close()
    net.load_state_dict(best[1])
    return {"history": history, "best_epoch": best[2], "best_val_mAP": best[0]}


def new_net(cfg: RetrievalConfig) -> EmbeddingNet:
    torch.manual_seed(cfg.seed)
    backbone, dim = build_backbone(cfg.backbone, cfg.vgg_weights or None)
    return EmbeddingNet(backbone, dim)


RESUMED_FIELDS = ("data", "backbone", "vgg_weights", "image_size", "pair_loss", "seed")
"""A run folder's checkpoint resumes only under the same values of these."""


def _match_distance(sp: Split, precision: float) -> float | None:
    """The largest distance ``d`` at which the query-database pairs of ``sp`` no farther apart than ``d`` are of the
    same class with at least ``precision`` (None: even the closest pairs fall short)."""
    d = np.sqrt(np.clip(2 - 2 * (sp.q @ sp.db.T), 0, None)).ravel()
    same = (sp.q_labels[:, None] == sp.db_labels[None, :]).ravel()
    order = np.argsort(d, kind="stable")
    precision_at = np.cumsum(same[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision_at >= precision)[0]
    return float(d[order][ok[-1]]) if len(ok) else None


def train(cfg: RetrievalConfig) -> dict[str, Any]:
    """The served model: stage 1, then stage 2 with ``cfg.pair_loss``, resumable from ``out/retrieval_last.pt``
    after any epoch. Writes ``metrics.json``, ``queries.json`` (each test query's AP and top 10, right or wrong),
    ``retrieval_grid.png`` and ``embedder.onnx`` (its card holds the match distance calibrated on val).

    Raises:
        ValueError: the data is not a retrieval set, or the run folder's checkpoint was made with other settings.
    """
    from dangerclip.modeling.retrieval import export_embedder
    from dangerclip.runtime.embedder import EmbedderCard
    from training.retrieval.report import query_report, retrieval_grid

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    net = new_net(cfg)
    ckpt = out / "retrieval_last.pt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt.is_file() else None
    if saved is not None:
        before = saved["config"]
        differ = [f"{f} {before.get(f)!r}" for f in RESUMED_FIELDS if before.get(f) != getattr(cfg, f)]
        if differ:
            raise ValueError(f"{ckpt} was made with {', '.join(differ)}: use another --out, or delete it to start over")
        log.info("resuming from %s (stage %d, epoch %d)", ckpt, saved["stage"], saved["state"]["epoch"])

    def saver(stage: int) -> Checkpoint:
        def save(state: dict[str, Any]) -> None:
            with atomic_path(ckpt) as tmp:
                torch.save({"config": vars(cfg), "stage": stage, "state": state}, tmp)

        return save

    t0 = time.perf_counter()
    if saved is None or saved["stage"] == 1:
        stage1(net, data, cfg, resume=saved["state"] if saved else None, save=saver(1))
    info = stage2(
        net, data, cfg, cfg.pair_loss, resume=saved["state"] if saved and saved["stage"] == 2 else None, save=saver(2)
    )

    def emb(x: torch.Tensor) -> np.ndarray:
        return embed_all(net, x)

    test = evaluate(emb, data, "test", (0, 128, 64, 32))
    full = next(iter(test.values()))
    distance = _match_distance(embed_split(emb, data, "val"), cfg.match_precision)
    sp = embed_split(emb, data, "test")
    queries = query_report(sp, full)
    write_json(out / "queries.json", queries, indent=1)
    retrieval_grid(queries, out / "retrieval_grid.png", image_size=cfg.image_size)
    headline = {k: round(full[k], 4) for k in ("mAP", "rank1", "rank8")}
    card = EmbedderCard(
        name=f"firearm-embedder-{cfg.backbone}",
        version=cfg.version,
        dim=net.dim,
        image_size=cfg.image_size,
        match_distance=distance,
        match_precision=cfg.match_precision if distance is not None else None,
        backbone=f"{cfg.backbone}/cls+{cfg.pair_loss}",
        metrics={"test": headline, "best_val_mAP": round(info["best_val_mAP"], 4)},
        notes="trained by dangerclip retrieval train",
    )
    export_embedder(net.eval(), card, out / "embedder.onnx")
    metrics = {
        "data": cfg.data,
        "test": {d: {k: v for k, v in m.items() if k not in ("per_query_ap", "top10")} for d, m in test.items()},
        "match_distance": distance,
        "match_precision": cfg.match_precision,
        "stage2": info,
        "seconds": round(time.perf_counter() - t0, 1),
        "model": str(out / "embedder.onnx"),
    }
    write_json(out / "metrics.json", metrics, indent=1)
    log.info("test mAP %.3f, rank-1 %.3f; match distance %s", full["mAP"], full["rank1"], distance)
    return metrics


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
            info = stage2(net, data, cfg, pair_loss)
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
    cmean = torch.tensor(model.card.preprocess.mean).view(1, 3, 1, 1)
    cstd = torch.tensor(model.card.preprocess.std).view(1, 3, 1, 1)
    size = model.card.preprocess.image_size

    @torch.no_grad()
    def embed(x: torch.Tensor) -> np.ndarray:
        img = x.float() / 255  # CLIP's own normalisation and size
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
