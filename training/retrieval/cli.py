"""``dangerclip retrieval train``: the served embedder (two stages, ``embedder.onnx``); ``dangerclip retrieval
ablation``: DeepFirearm's ablation table; both on any retrieval set (``training.firearms.readers``).
``dangerclip firearms``: write the synthetic one."""

from __future__ import annotations

import argparse
import json

from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from training.retrieval.train import RetrievalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train the served embedder (classification, then pairs) and export it")
    add_options(tr, RetrievalConfig, required=("data", "out"))
    ab = sub.add_parser("ablation", help="the paper's six rows on the synthetic (or your) firearm set")
    add_options(ab, RetrievalConfig, required=("data", "out"))
    ab.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True, help="add the frozen CLIP row")


@exits_2_on_bad_input("retrieval")
def run(args: argparse.Namespace) -> int:
    from training.retrieval.train import ablation, train

    if args.action == "train":
        print(json.dumps(train(RetrievalConfig(**given_options(RetrievalConfig, args))), indent=1))
        return 0
    print(ablation(RetrievalConfig(**given_options(RetrievalConfig, args)), clip=args.clip))
    return 0


def add_firearms_arguments(parser: argparse.ArgumentParser) -> None:
    from training.firearms.dataset import FirearmsConfig

    parser.add_argument("out", help="output folder")
    add_options(parser, FirearmsConfig)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")


@exits_2_on_bad_input("firearms")
def run_firearms(args: argparse.Namespace) -> int:
    from training.firearms.dataset import FirearmsConfig, generate

    cfg = FirearmsConfig(**given_options(FirearmsConfig, args))
    if cfg.per_family < 3 or cfg.images_per_model < 4:
        raise ValueError("need at least 3 models per family and 4 images per model (2 are queries)")
    print(json.dumps(generate(args.out, cfg, workers=args.workers)))
    return 0
