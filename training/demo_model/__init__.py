"""Build the offline demo model end to end (``dangerclip demo-model``).

One command, cached stage by stage under ``--work`` (a stage is redone only when its options change):

1. ``synth``: the head's synthetic set (labels, exact masks, train/val/test splits), drawn in ``--workers``
   processes.
2. ``pretrain``: the backbone, a small hybrid CLIP (``demo`` config: convolutional stem + 4-layer ViT),
   pre-trained contrastively on synthetic captions (``training.pretrain``) from a disjoint, in-memory set.
   By default this stage *loads* the committed result, ``training/assets/demo_backbone.safetensors``, as a
   user loads CLIP weights: the recipe needs 1.28 million image views (5 000 steps of 256 images drawn from
   100 000), which took 6 minutes on one H100 and would take about 16 hours on 2 CPU cores. ``--backbone
   none`` redoes it (``--pretrain-device auto`` uses a GPU when there is one). A linear probe on the patch
   tokens (weapon patches vs the rest, AUROC on held-out images) is measured for the random and the
   pre-trained backbone.
3. ``train``: the paper's head on the frozen backbone (``training.train``: BCE + 2·focal + dice, threshold
   chosen on val, map calibration), and the no-dense ablation (BCE only) on the same features.
4. ``export``: the dense model, with its vision tower inside the checkpoint so that nothing else is needed,
   as ONNX and safetensors into ``--assets`` (default ``dangerclip/assets/demo``), plus ``report.json`` and
   ``report.md`` with the figures (F1, AP, localisation with and without the dense losses, probe AUROC).

The demo model is trained and evaluated on synthetic images only; its figures say that the pipeline works
end to end on data whose masks are exact. They are not a claim about real images.

``--ci`` is the same pipeline at toy sizes (pre-training included; well under a minute) for the tests; its
figures mean nothing.

Modules: ``config`` (``DemoConfig`` with the backbone's and the head's recipes as a ``PretrainConfig`` and a
``TrainConfig``), ``stage_cache``, ``stages`` (synth, pretrain, train), ``assets`` (export and reports),
``build``, ``cli``. The names below are the package's API.
"""

from training.demo_model.build import build
from training.demo_model.cli import add_arguments, config_from_args, run
from training.demo_model.config import ASSETS_DIR, DEMO_BACKBONE, DemoConfig, demo_head, demo_pretrain

__all__ = [
    "ASSETS_DIR",
    "DEMO_BACKBONE",
    "DemoConfig",
    "add_arguments",
    "build",
    "config_from_args",
    "demo_head",
    "demo_pretrain",
    "run",
]
