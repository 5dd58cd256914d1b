"""``dangerclip types``: train a firearm-type head (``train``) or compare pre-training methods (``compare``)."""

from __future__ import annotations

import argparse
import json

from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from training.ssl.config import METHODS, TypeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="pre-train, probe, fine-tune, calibrate and export one type head")
    add_options(train, TypeConfig, custom={"method": {"choices": METHODS}}, required=("data", "out"))
    compare = sub.add_parser("compare", help="every method and backbone (and the frozen CLIP) on one split")
    add_options(compare, TypeConfig, exclude=("method", "backbone", "export"), required=("data", "out"))
    compare.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to compare")
    compare.add_argument("--backbones", default="vit-small,resnet-small", help="comma-separated backbones")
    compare.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True, help="add the frozen CLIP rows")


@exits_2_on_bad_input("types")
def run(args: argparse.Namespace) -> int:
    cfg = TypeConfig(**given_options(TypeConfig, args))
    if args.action == "train":
        from training.ssl.run import run as run_one

        figures = run_one(cfg)
        print(json.dumps({"served": figures["served"], "probe_test_accuracy": figures["probe"]["test"]["accuracy"]}))
        return 0
    from training.ssl.compare import compare

    table = compare(cfg, methods=args.methods.split(","), backbones=args.backbones.split(","), clip=args.clip)
    print(table)
    return 0
