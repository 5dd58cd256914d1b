"""``dangerclip synth``: write a synthetic set, or the demo's sample images."""

from __future__ import annotations

import argparse

from dangerclip.runtime.commandline import add_options, comma_list, exits_2_on_bad_input, given_options
from training.synth.config import SynthConfig
from training.synth.dataset import generate
from training.synth.samples import SAMPLE_SEED, write_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder")
    add_options(
        parser,
        SynthConfig,
        flags={"n": ("-n", "--num"), "image_format": ("--format",)},
        custom={"categories": {"type": comma_list, "nargs": None}, "image_format": {"choices": ("jpg", "png")}},
    )
    parser.add_argument(
        "--samples",
        action="store_true",
        help=f"write the demo's sample images instead (default seed {SAMPLE_SEED}, -n 16, mixed encodings)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (same set for any)")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(**given_options(SynthConfig, args))


@exits_2_on_bad_input("synth")
def run(args: argparse.Namespace) -> int:
    """Write the set (or the samples) and print the manifest's path."""
    cfg = config_from_args(args)
    if args.samples:
        n = 16 if args.n is None else cfg.n
        seed = SAMPLE_SEED if args.seed is None else cfg.seed
        print(write_samples(args.out, n=n, seed=seed, size=cfg.size))
        return 0
    cfg.validate()
    print(generate(args.out, cfg, workers=args.workers))
    return 0
