"""Pre-training a type backbone: SimCLR, DINO, mixed DINO + supervised, MAE, or supervised, with a k-NN monitor.

The losses, projection heads, multi-crop transforms, the teacher's momentum schedule and MAE's masking, masked
encoder and decoder are lightly's (``NTXentLoss``, ``SimCLRProjectionHead``, ``DINOLoss``, ``DINOProjectionHead``,
``DINOTransform``, ``update_momentum``, ``cosine_schedule``, ``MAETransform``, ``MaskedVisionTransformerTorchvision``,
``MAEDecoder``, ``random_token_mask``): the field's reference implementations rather than copies. What is
ours is the loop: epochs over an in-memory image set, AdamW with warm-up + cosine, a k-NN accuracy on the val
split every few epochs (the usual SSL monitor: cosine similarity, 20 neighbours, temperature-weighted votes),
resume from ``last.pt``, and progress lines in logs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dangerclip.modeling.typenet import BackboneSpec
from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD
from dangerclip.runtime.files import atomic_path
from dangerclip.runtime.progress import progress
from training.ssl.config import TypeConfig
from training.ssl.data import ImageSet, Item

log = logging.getLogger(__name__)
NORMALIZE = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
KEY_DEFAULTS: dict[str, Any] = {"label_fraction": TypeConfig.label_fraction}
"""What a checkpoint made before a run-key field existed was made with (the field's default)."""


def eval_transform(size: int) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms as T

    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(**NORMALIZE)])


def train_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """The supervised and fine-tuning augmentation: crop, flip, mild colour change."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.05),
            T.ToTensor(),
            T.Normalize(**NORMALIZE),
        ]
    )


def ssl_transform(method: str, size: int, family: str = "resnet") -> Callable[[Any], list[torch.Tensor]]:
    """lightly's views for ``method``: two SimCLR views, MAE's one crop, or DINO's 2 global + 4 local crops (local
    crops at half the size for a ResNet; for a ViT, whose position embeddings fix its input size, at full size from
    the same small regions)."""
    from lightly.transforms import DINOTransform, MAETransform, SimCLRTransform

    if method == "mae":
        return MAETransform(input_size=size, min_scale=0.2, normalize=NORMALIZE)
    if method == "simclr":
        return SimCLRTransform(input_size=size, min_scale=0.2, gaussian_blur=0.0, normalize=NORMALIZE)
    return DINOTransform(
        global_crop_size=size,
        local_crop_size=size if family == "vit" else max(16, size // 2),
        n_local_views=4,
        gaussian_blur=(0.5, 0.1, 0.2),
        normalize=NORMALIZE,
    )


class _DINO(nn.Module):
    """Student and teacher (a momentum copy) backbones with DINO projection heads; an optional class head on the
    student's features for the mixed scheme."""

    def __init__(self, backbone: nn.Module, dim: int, n_classes: int = 0) -> None:
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.student = backbone
        self.student_head = DINOProjectionHead(dim, 512, 64, 1024, freeze_last_layer=1)
        self.teacher = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(dim, 512, 64, 1024)
        deactivate_requires_grad(self.teacher)
        deactivate_requires_grad(self.teacher_head)
        self.classifier = nn.Linear(dim, n_classes) if n_classes else None


class _SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.student = backbone
        self.head = SimCLRProjectionHead(dim, dim, 128)


class _MAE(nn.Module):
    """Masked autoencoder on torchvision's ViT (He et al. 2021): the encoder sees a quarter of the patches (and the
    class token), a one-block decoder predicts the pixels of the others. The encoder wraps the backbone's own ViT,
    so pre-training trains the backbone in place; lightly fixes its position embeddings to 2-D sin-cos, as MAE
    does, and fine-tuning keeps them so."""

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 128) -> None:
        from lightly.models.modules import MaskedVisionTransformerTorchvision
        from lightly.models.modules.masked_autoencoder import MAEDecoder

        super().__init__()
        vit = backbone.vit
        self.student = backbone
        self.encoder = MaskedVisionTransformerTorchvision(vit=vit)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = MAEDecoder(
            seq_length=vit.seq_length,
            num_layers=1,
            num_heads=4,
            embed_input_dim=vit.hidden_dim,
            hidden_dim=decoder_dim,
            mlp_dim=4 * decoder_dim,
            out_dim=3 * vit.patch_size**2,
        )
        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_size

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the predicted pixels of the masked patches."""
        from lightly.models import utils

        b, seq = images.shape[0], self.encoder.sequence_length
        keep, masked = utils.random_token_mask(size=(b, seq), mask_ratio=self.mask_ratio, device=images.device)
        encoded = self.encoder.encode(images=images, idx_keep=keep)
        tokens = utils.repeat_token(self.mask_token, (b, seq))
        tokens = utils.set_at_index(tokens, keep, self.decoder.embed(encoded).type_as(tokens))
        pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), masked))
        # the patches have no class token: index ``i`` of the sequence is patch ``i - 1``
        target = utils.get_at_index(utils.patchify(images, self.patch_size), masked - 1)
        return F.mse_loss(pred, target)


class _Supervised(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int, n_classes: int) -> None:
        super().__init__()
        self.student = backbone
        self.classifier = nn.Linear(dim, n_classes)


@torch.no_grad()
def features(backbone: nn.Module, items: list[Item], size: int, device: torch.device, batch: int = 128) -> torch.Tensor:
    """``[N, D]`` L2-normalised features of ``items`` (centre crops)."""
    backbone.eval()
    ds = ImageSet(items, eval_transform(size))
    out = []
    for i in range(0, len(ds), batch):
        x = torch.stack([ds[j][0] for j in range(i, min(i + batch, len(ds)))]).to(device)
        out.append(F.normalize(backbone(x).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


def knn_accuracy(
    bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int
) -> float:
    """Weighted k-NN (cosine, ``exp(sim / 0.07)`` votes) accuracy of ``query`` against ``bank``."""
    sim = query @ bank.T
    k = min(k, bank.shape[0])
    w, idx = sim.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], n_classes).scatter_add_(1, bank_labels[idx], (w / 0.07).exp())
    return float((votes.argmax(1) == labels).float().mean())


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def pretrain(
    cfg: TypeConfig,
    backbone: nn.Module,
    spec: BackboneSpec,
    train: list[Item],
    val: list[Item],
    n_classes: int,
    extra: list[Item],
    size: int,
    device: torch.device,
    out: Path,
) -> dict[str, Any]:
    """Pre-train ``backbone`` in place with ``cfg.method``; returns the history (loss, k-NN accuracy, seconds).

    ``random`` returns at once. Supervised and mixed use the labels of ``train`` only; SimCLR, DINO and MAE use
    ``train`` and ``extra`` without labels.
    """
    history: dict[str, Any] = {"method": cfg.method, "epochs": [], "seconds": 0.0}
    if cfg.method == "random" or cfg.epochs == 0:
        return history
    from lightly.loss import DINOLoss, NTXentLoss
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    labelled = cfg.method in ("supervised", "mixed")
    items = list(train) + ([] if labelled else list(extra))
    transform = train_transform(size) if cfg.method == "supervised" else ssl_transform(cfg.method, size, spec.family)
    ds = ImageSet(items, transform)
    model: nn.Module
    if cfg.method == "simclr":
        model = _SimCLR(backbone, spec.feature_dim)
        ntxent = NTXentLoss(temperature=0.2)
    elif cfg.method == "supervised":
        model = _Supervised(backbone, spec.feature_dim, n_classes)
    elif cfg.method == "mae":
        model = _MAE(backbone)
    else:
        model = _DINO(backbone, spec.feature_dim, n_classes if cfg.method == "mixed" else 0)
        dino = DINOLoss(output_dim=1024, warmup_teacher_temp_epochs=max(1, cfg.epochs // 3))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(ds) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    run_key = {
        "method": cfg.method,
        "backbone": cfg.backbone,
        "image_size": size,
        "data": cfg.data,
        "seed": cfg.seed,
        "unlabelled": cfg.unlabelled,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "mixed_weight": cfg.mixed_weight,
    }
    if labelled:  # self-supervision sees every train image whatever share keeps its labels
        run_key["label_fraction"] = cfg.label_fraction
    history["images"] = len(ds)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch = _resume(out / "pretrain_last.pt", model, opt, history, gen, run_key)
    bar = progress(total, desc=f"pretrain {cfg.method}", unit="step", initial=start_epoch * steps_per_epoch)
    t0 = time.perf_counter() - history["seconds"]
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(len(ds), generator=gen).tolist()
        losses = []
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.lr, warmup=max(1, total // 10))
            batch = [ds[i] for i in order[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
            labels = torch.tensor([b[1] for b in batch], device=device)
            if cfg.method == "supervised":
                x = torch.stack([b[0] for b in batch]).to(device)
                loss = F.cross_entropy(model.classifier(model.student(x)), labels)
            elif cfg.method == "simclr":
                v0 = torch.stack([b[0][0] for b in batch]).to(device)
                v1 = torch.stack([b[0][1] for b in batch]).to(device)
                loss = ntxent(model.head(model.student(v0)), model.head(model.student(v1)))
            elif cfg.method == "mae":
                loss = model.loss(torch.stack([b[0][0] for b in batch]).to(device))
            else:
                m = cosine_schedule(step, total, 0.996, 1.0)
                update_momentum(model.student, model.teacher, m)
                update_momentum(model.student_head, model.teacher_head, m)
                views = [torch.stack([b[0][v] for b in batch]).to(device) for v in range(len(batch[0][0]))]
                with torch.no_grad():
                    teacher_out = [model.teacher_head(model.teacher(v)) for v in views[:2]]
                student_feats = [model.student(v) for v in views]
                student_out = [model.student_head(f) for f in student_feats]
                loss = dino(teacher_out, student_out, epoch=epoch)
                if model.classifier is not None:
                    ce = F.cross_entropy(model.classifier(student_feats[0]), labels)
                    loss = loss + cfg.mixed_weight * ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(model, _DINO):
                model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": sum(losses) / len(losses)}
        last = epoch + 1 == cfg.epochs
        if last or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0):
            bank = features(model.student, train, size, device)
            query = features(model.student, val, size, device)
            bl = torch.tensor([i.label for i in train])
            ql = torch.tensor([i.label for i in val])
            row["knn_val_accuracy"] = knn_accuracy(bank, bl, query, ql, cfg.knn_k, n_classes)
            log.info("epoch %d: loss %.4f, k-NN val accuracy %.3f", epoch + 1, row["loss"], row["knn_val_accuracy"])
        history["epochs"].append(row)
        history["seconds"] = time.perf_counter() - t0
        _save(out / "pretrain_last.pt", model, opt, history, epoch + 1, gen, run_key)
    bar.close()
    return history


def _save(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    history: dict[str, Any],
    epoch: int,
    gen: torch.Generator,
    key: dict[str, Any],
) -> None:
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "history": history, "epoch": epoch}
    with atomic_path(path) as tmp:
        torch.save({**state, "gen": gen.get_state(), "key": key}, tmp)


def _resume(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    history: dict[str, Any],
    gen: torch.Generator,
    key: dict[str, Any],
) -> int:
    """The epoch to start at: 0, or the one after the run folder's last checkpoint (model, optimiser, history and
    the shuffling generator restored).

    Raises:
        ValueError: the checkpoint was made by a run with another method, backbone, size, data, seed, batch size,
            learning rate, weight decay or mixed weight (more epochs is a resume; fields a checkpoint predates are
            not compared).
    """
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    before = {**KEY_DEFAULTS, **state.get("key", {})}
    differ = [f"{k} {before[k]!r} (now {v!r})" for k, v in key.items() if k in before and before[k] != v]
    if differ:
        raise ValueError(f"{path} was made with {', '.join(differ)}: use another --out, or delete it to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    history.update(state["history"])
    if "gen" in state:
        gen.set_state(state["gen"])
    log.info("resuming pre-training at epoch %d from %s", state["epoch"], path)
    return int(state["epoch"])
