"""``TypeConfig``: one run of pre-training and the downstream protocols (every field is a command-line option)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("random", "supervised", "simclr", "dino", "mixed", "mae")
"""Pre-training methods: none (random init), supervised on the labels, SimCLR, DINO, DINO + supervised, MAE (masked
patches; ViT backbones only)."""


def fits(backbone: str, method: str) -> bool:
    """Whether ``method`` can pre-train ``backbone``: MAE masks image patches, so it takes ViTs only (an unknown
    backbone is :func:`check_method`'s to refuse)."""
    from dangerclip.modeling.typenet import BACKBONES

    spec = BACKBONES.get(backbone)
    return not (method == "mae" and spec is not None and spec.family != "vit")


def check_method(backbone: str, method: str) -> None:
    """Raises ValueError: an unknown backbone or method, or a method the backbone cannot take (each named)."""
    from dangerclip.modeling.typenet import BACKBONES

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if not fits(backbone, method):
        vits = sorted(k for k, v in BACKBONES.items() if v.family == "vit")
        raise ValueError(f"{method} masks image patches: it needs a ViT backbone ({', '.join(vits)}), not {backbone!r}")


@dataclass
class TypeConfig:
    data: str = ""
    """Labelled images, ``<root>/<class>/*.jpg`` (split per class into train/val/test)."""
    out: str = ""
    """Run folder (checkpoint, history, metrics, plots, the exported type head)."""
    backbone: str = "vit-small"
    """``resnet-small`` or ``vit-small`` (2 CPU cores, minutes), ``resnet50`` or ``vit-b-16`` (the paper's; GPU)."""
    method: str = "dino"
    """Pre-training: ``random``, ``supervised``, ``simclr``, ``dino``, ``mixed`` (DINO + supervised), ``mae`` (ViT)."""
    unlabelled: str = ""
    """Extra unlabelled images (any layout) for self-supervised pre-training."""
    label_fraction: float = 1.0
    """Share of each class's train images that keep their labels; the rest join pre-training unlabelled (the
    few-labels regime self-supervision is for). Val and test keep theirs."""
    look_alike: str = "toy,alarm,airsoft"
    """Comma-separated words: a class whose name contains one is a non-lethal look-alike."""
    epochs: int = 30
    """Pre-training epochs."""
    batch_size: int = 64
    """Pre-training batch size."""
    lr: float = 1e-3
    """Pre-training learning rate (AdamW; cosine schedule with warm-up)."""
    weight_decay: float = 0.04
    """Pre-training weight decay."""
    image_size: int = 0
    """Input side in pixels (0: the backbone's own, 64 for the small ones)."""
    knn_every: int = 5
    """Evaluate the k-NN monitor on the val split every this many epochs (0: only at the end)."""
    knn_k: int = 20
    """Neighbours of the k-NN monitor."""
    finetune_epochs: int = 15
    """Full fine-tuning epochs downstream (0: linear probe only)."""
    finetune_lr: float = 3e-4
    """Fine-tuning learning rate (the head gets 10x)."""
    mixed_weight: float = 1.0
    """``mixed``: weight of the supervised cross-entropy next to the DINO loss."""
    val_fraction: float = 0.15
    """Share of each class held out for validation (model choice, calibration)."""
    test_fraction: float = 0.15
    """Share of each class held out for the test figures."""
    seed: int = 0
    """Seed of the splits, the initialisation and the augmentations."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    export: bool = True
    """Export the fine-tuned (else probed) classifier as the served type head."""
    version: str = "0.1.0"
    """Version written into the type head's card."""

    def validate(self) -> None:
        check_method(self.backbone, self.method)
        if not self.data:
            raise ValueError("no --data: a folder of <class>/ subfolders of images")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.epochs < 0 or self.finetune_epochs < 0 or self.batch_size < 2:
            raise ValueError("epochs must be >= 0 and batch_size >= 2")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
