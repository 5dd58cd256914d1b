"""How many labelled images a vision tower needs to learn the synthetic weapon label (a diagnostic, not speed).

This is the measurement behind the ``demo`` config's convolutional stem (see ``training/pretrain.py``): each
tower is trained *supervised* on the binary weapon label from scratch, and its test AUROC is printed after
a growing number of image views. Supervised training is an upper bound on what contrastive pre-training on
captions can teach the same tower from the same images, so a tower that stays near 0.5 here cannot make a
useful frozen backbone.

    .venv/bin/python bench/learnability.py --towers tiny stem resnet18 --views 16000 48000 100000

Made for a GPU (``--device auto`` picks CUDA): on an H100 each tower takes about a minute to 100 000 views.
On 2 CPU cores, use ``--views 4000 --train 2000``; the figures then mean little. Measured on an H100 with
the first version of this script (AUROC at 16k / 48k / 100k / 200k views, 100 000 training images, 2 000
test images): ``tiny`` 0.56 / 0.59 / 0.60 / 0.65; a stem with one 3×3 conv per stage (``ConvStem`` has two)
0.52 / 0.58 / 0.66 / 0.72; ResNet-18 at rate 1e-3 (60 000 images) 0.50 / 0.78 / 0.92.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.synth import SynthConfig, make_sample, map_in_processes
from training.train import resolve_device

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _draw(job: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, lo, hi = job
    cfg = SynthConfig(n=hi, seed=seed)
    samples = [make_sample(i, cfg) for i in range(lo, hi)]
    return np.stack([np.asarray(s.image) for s in samples]), np.array([s.labels["weapon"] for s in samples])


def draw(seed: int, n: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    jobs = [(seed, lo, min(n, lo + 500)) for lo in range(0, n, 500)]
    parts = map_in_processes(_draw, jobs, workers)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def tower(name: str) -> nn.Module:
    """A vision tower with a 128-d output: the ``tiny`` or ``demo``-style ViT, or torchvision's ResNet-18."""
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=128)
    from dangerclip.modeling.backbone import build_clip
    from dangerclip.modeling.factory import get_config

    cfg = get_config("tiny")["clip"]
    if name == "stem":
        cfg["vision_cfg"]["conv_stem"] = [32, 64, 128]
    elif name != "tiny":
        raise ValueError(f"unknown tower {name!r}")
    return build_clip(cfg).visual


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    p = labels.sum()
    return float((ranks[labels == 1].sum() - p * (p + 1) / 2) / (p * (len(labels) - p)))


def run(name: str, train: tuple, test: tuple, views: list[int], lr: float, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    model, head = tower(name).to(device), nn.Linear(128, 1).to(device)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    xtr, ytr = torch.from_numpy(train[0]), torch.from_numpy(train[1]).float()

    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device).permute(0, 3, 1, 2).float() / 255 - mean) / std

    rng = np.random.default_rng(0)
    out: list[float] = []
    seen = step = 0
    while len(out) < len(views):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200)
        idx = torch.from_numpy(rng.integers(0, len(xtr), 32))
        x = prep(xtr[idx])
        x = torch.where((torch.rand(32, device=device) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        model.train()
        loss = F.binary_cross_entropy_with_logits(head(model(x)).squeeze(1), ytr[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen, step = seen + 32, step + 1
        if seen >= views[len(out)]:
            model.eval()
            with torch.no_grad():
                s = torch.cat(
                    [head(model(prep(torch.from_numpy(test[0][i : i + 250])))) for i in range(0, len(test[0]), 250)]
                )
            out.append(auroc(s.squeeze(1).cpu().numpy(), test[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--towers", nargs="+", default=["tiny", "stem", "resnet18"])
    ap.add_argument("--views", nargs="+", type=int, default=[16000, 48000, 100000])
    ap.add_argument("--train", type=int, default=60000, help="training images (seed 11)")
    ap.add_argument("--test", type=int, default=2000, help="test images (seed 12)")
    ap.add_argument("--lr", type=float, default=5e-4, help="AdamW rate (ResNet-18 used 1e-3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    train, test = draw(11, args.train, args.workers), draw(12, args.test, args.workers)
    print(f"drew {args.train} + {args.test} images in {time.perf_counter() - t0:.0f} s; device {device}")
    print("tower      " + "  ".join(f"{v:>8d}" for v in args.views) + "   (test AUROC after that many views)")
    for name in args.towers:
        t = time.perf_counter()
        res = run(name, train, test, args.views, args.lr, device)
        print(f"{name:<10} " + "  ".join(f"{a:8.3f}" for a in res) + f"   ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
