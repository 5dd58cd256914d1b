"""``DemoConfig``: everything that decides the demo model, with the recipes of the backbone and the head."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from training.config import TrainConfig
from training.pretrain.config import PretrainConfig

ASSETS_DIR = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "demo"
"""Where the committed demo model lives (``dangerclip/assets/demo``)."""

DEMO_BACKBONE = Path(__file__).resolve().parents[1] / "assets" / "demo_backbone.safetensors"
"""The committed pre-trained ``demo`` CLIP (vision tower fp32, text tower fp16; how it was made is in its
metadata under ``dangerclip.pretrain``)."""


def demo_pretrain() -> PretrainConfig:
    """The committed backbone's pre-training recipe: 5 000 steps of 256 images, FLIP masking of a quarter."""
    return PretrainConfig(
        steps=5000, batch_size=256, lr=1e-3, warmup=300, mask_ratio=0.25, device="auto", log_every=100
    )


def demo_head() -> TrainConfig:
    """The paper's head run (2 000 steps of 32) on one colour view per image, half of them grey."""
    return TrainConfig(
        iterations=2000,
        batch_size=32,
        lr=5e-4,
        warmup=100,
        color_views=1,
        grayscale=0.5,
        threads=2,
        checkpoint_every=0,
        eval_every=0,
        export=False,
        progress=False,
        version="2.0.0-demo",
    )


@dataclass
class DemoConfig:
    """Everything that decides the demo model. Stage caches are keyed on the fields each stage reads."""

    work: str = "runs/demo-model"
    """Working folder (data, backbone, runs); reused between invocations."""
    assets: str = str(ASSETS_DIR)
    """Where ``model.onnx``, ``model.safetensors`` and the reports are written."""
    categories: list[str] = field(default_factory=lambda: ["weapon"])
    """The model's prompts (``weapon``, or e.g. ``gun,knife``); the head's set is labelled with them."""
    model: str = "demo"
    """DangerCLIP model config of the backbone and head (``demo``; ``tiny`` works too)."""
    backbone: str = str(DEMO_BACKBONE)
    """Pre-trained CLIP weights to load (default: the committed ``DEMO_BACKBONE``); empty (or ``none`` on the
    command line) to pre-train here with ``pretrain``."""
    n_head: int = 6000
    """Images in the head's synthetic set (split 80/10/10 into train/val/test)."""
    head_seed: int = 1000
    """Seed of the head's set."""
    n_pretrain: int = 100000
    """Images in the disjoint pre-training set (drawn in memory)."""
    pretrain_seed: int = 2000
    """Seed of the pre-training set (must differ from ``head_seed``); its held-out images use
    ``pretrain_seed + 1``."""
    pretrain_grayscale: float = 0.2
    """Share of the pre-training images turned grey, captions without colour words."""
    pretrain: PretrainConfig = field(default_factory=demo_pretrain)
    """How the backbone is pre-trained when ``backbone`` is empty; its seed also initialises the CLIP."""
    head: TrainConfig = field(default_factory=demo_head)
    """How the head is trained. Each run of the stage sets its data, categories, model, backbone weights,
    folders, ``dense`` (the paper's losses or the ablation) and ``report``. Its ``threads`` hold for the
    whole build. Without grey views (here or in pre-training) the head relied on colour: recall on greyscale
    copies of the test images was 0.36."""
    ablation: bool = True
    """Also train the no-dense ablation (needed for the localisation comparison)."""
    probe_images: int = 200
    """Held-out images for the patch-token linear probe (0 skips it)."""
    workers: int = 2
    """Processes drawing synthetic images."""

    @classmethod
    def ci(cls, work: str, assets: str) -> DemoConfig:
        """Toy sizes for tests: the whole pipeline, pre-training included, in well under a minute."""
        return cls(
            work=work,
            assets=assets,
            backbone="",
            n_head=60,
            n_pretrain=48,
            pretrain=dataclasses.replace(demo_pretrain(), steps=3, batch_size=16, warmup=1),
            head=dataclasses.replace(
                demo_head(), iterations=8, batch_size=8, warmup=1, color_views=0, version="0.0.0-ci"
            ),
            probe_images=12,
            workers=1,
        )

    def validate(self) -> None:
        """Raise ``ValueError`` for a set of options that cannot make a demo model."""
        from training.synth import CATEGORY_KINDS

        bad = [c for c in self.categories if c not in CATEGORY_KINDS]
        if bad:
            raise ValueError(f"unknown categories {bad}; choose from {sorted(CATEGORY_KINDS)}")
        if self.head_seed == self.pretrain_seed:
            raise ValueError("head_seed and pretrain_seed must differ: pre-training must not see the head's images")
        if min(self.n_head, self.n_pretrain, self.pretrain.steps, self.head.iterations) < 1:
            raise ValueError("n_head, n_pretrain, pretrain.steps and head.iterations must be >= 1")
        if not (0.0 <= self.pretrain_grayscale <= 1.0 and 0.0 <= self.head.grayscale <= 1.0):
            raise ValueError("pretrain_grayscale and head.grayscale must be probabilities in [0, 1]")
