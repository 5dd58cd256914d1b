"""``build``: run every stage of the demo model in order, reusing the cached ones."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dangerclip.modeling.device import torch_threads
from training.demo_model.assets import stage_export
from training.demo_model.config import DemoConfig
from training.demo_model.stages import stage_pretrain, stage_synth, stage_train

log = logging.getLogger(__name__)


def build(cfg: DemoConfig, force: bool = False, command: str = "dangerclip demo-model") -> dict[str, Any]:
    """Run every stage (reusing cached ones) and return the report written to ``cfg.assets``.

    Args:
        cfg: the build.
        force: redo every stage even when cached.
        command: the command line that asked for it, recorded in the report.
    """
    cfg.validate()
    t0 = time.perf_counter()
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.head.threads):
        data = stage_synth(cfg, force)
        weights, pre = stage_pretrain(cfg, data, force)
        runs = {"dense": stage_train(cfg, data, weights, dense=True, force=force)}
        if cfg.ablation:
            runs["no-dense"] = stage_train(cfg, data, weights, dense=False, force=force)
        stage_export(cfg, weights, pre, runs, command, manifest=data["head"])
    report = json.loads((Path(cfg.assets) / "report.json").read_text())
    log.info("demo-model built in %.1f s", time.perf_counter() - t0)
    return report
