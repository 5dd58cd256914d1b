"""``dangerclip demo-model``: build the offline demo model (options from ``DemoConfig`` and its recipes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dangerclip.runtime.commandline import add_options, comma_list, command_line, exits_2_on_bad_input, given_options
from training.config import TrainConfig
from training.demo_model.build import build
from training.demo_model.config import DemoConfig
from training.pretrain.config import PretrainConfig

DEMO_OPTIONS = (
    "work",
    "assets",
    "categories",
    "model",
    "backbone",
    "n_head",
    "n_pretrain",
    "pretrain_grayscale",
    "workers",
    "ablation",
    "probe_images",
)
HEAD_OPTIONS = ("iterations", "batch_size", "lr", "color_views", "grayscale", "threads")
HEAD_FLAGS = {name: ("--" + name.replace("_", "-"),) for name in ("iterations", "color_views", "grayscale", "threads")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DemoConfig, only=DEMO_OPTIONS, custom={"categories": {"type": comma_list, "nargs": None}})
    pre = parser.add_argument_group("pre-training (with --backbone none)")
    add_options(
        pre,
        PretrainConfig,
        prefix="pretrain",
        exclude=("seed",),
        flags={"global_words": ("--pretrain-global-words", "--global-words")},
    )
    head = parser.add_argument_group("head training")
    add_options(head, TrainConfig, prefix="head", only=HEAD_OPTIONS, flags=HEAD_FLAGS)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the backbone's initialisation and pre-training, and the head (default: 0)",
    )
    parser.add_argument("--ci", action="store_true", help="toy sizes for tests (< 1 minute; figures mean nothing)")
    parser.add_argument("--force", action="store_true", help="redo every stage even when cached")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The build the command line asks for: ``--ci`` sizes or the defaults, then the options given.

    ``--iterations`` also sets the head's warm-up to a twentieth of the steps (at most 100), as the recipe
    has it; ``--backbone none`` pre-trains the backbone here.
    """
    base = DemoConfig.ci(DemoConfig.work, DemoConfig.assets) if args.ci else DemoConfig()
    cfg = dataclasses.replace(base, **given_options(DemoConfig, args))
    pre = given_options(PretrainConfig, args, prefix="pretrain")
    head = given_options(TrainConfig, args, prefix="head")
    if args.seed is not None:
        pre["seed"] = head["seed"] = args.seed
    if "iterations" in head:
        head["warmup"] = max(1, min(100, head["iterations"] // 20))
    cfg.pretrain = dataclasses.replace(cfg.pretrain, **pre)
    cfg.head = dataclasses.replace(cfg.head, **head)
    if cfg.backbone.lower() in ("", "none"):
        cfg.backbone = ""
    return cfg


@exits_2_on_bad_input("demo-model")
def run(args: argparse.Namespace) -> int:
    """Build (or reuse) every stage and print the headline figures as JSON."""
    cfg = config_from_args(args)
    cfg.validate()
    report = build(cfg, force=args.force, command=command_line("dangerclip demo-model", add_arguments, args))
    summary = {k: report.get(k) for k in ("dense", "no_dense", "thresholds")}
    summary["probe_auroc"] = {
        "before": (report["pretrain"].get("probe_before") or {}).get("auroc"),
        "after": (report["pretrain"].get("probe_after") or {}).get("auroc"),
    }
    summary["assets"] = str(Path(cfg.assets))
    print(json.dumps(summary, indent=1))
    return 0
