"""``dangerclip pseudomask``: options from ``JobConfig``'s fields, the summary as JSON on stdout.

The job itself is imported when the command runs, so that ``--help`` and argument checks load no model code.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from dangerclip.runtime.filekind import expect
from pseudomask.config import JobConfig
from pseudomask.inputs import load_rows, parse_shard


def _caption_arg(text: str) -> tuple[str, list[str]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--caption must be CATEGORY=PHRASE[;PHRASE...], got {text!r}")
    cat, phrases = text.split("=", 1)
    return cat.strip(), [p.strip() for p in phrases.split(";") if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dangerclip pseudomask``."""
    add_options(
        parser,
        JobConfig,
        positional=["input"],
        required=["out"],
        exclude=["captions"],
        custom={"shard": {"type": parse_shard, "metavar": "I/N"}, "segmenter": {"choices": ("sam", "box")}},
    )
    parser.add_argument(
        "--caption",
        action="append",
        type=_caption_arg,
        default=[],
        metavar="CAT=PHRASE[;PHRASE]",
        help="what the detector looks for per category (default: the category name); repeatable",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="load no model: write OUT/manifest.jsonl for the whole input from every shard's results",
    )


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """The options given; a progress bar only on a terminal, at least one image per batch, no shard with
    ``--collect``."""
    given = given_options(JobConfig, args)
    captions: dict[str, list[str]] = {}
    for cat, phrases in args.caption:
        captions.setdefault(cat, []).extend(phrases)
    given["captions"] = captions
    given["batch_size"] = max(1, given.get("batch_size", 1))
    given["progress"] = given.get("progress", True) and sys.stderr.isatty()
    if args.collect:
        given["shard"] = None
    return JobConfig(**given)


@exits_2_on_bad_input("pseudomask")
def run(args: argparse.Namespace) -> int:
    """Run the job (or ``--collect``) and print its summary as JSON on stdout.

    A missing weight file (``WeightsError``) or bad input is one line on stderr and exit code 2; an
    interrupted run exits 130.
    """
    from pseudomask.factory import check_weights
    from pseudomask.job import PseudoMaskJob

    cfg = config_from_args(args)
    expect(cfg.input, "manifest", "directory", what="input")
    job = PseudoMaskJob(cfg)
    if args.collect:
        n = job.write_training_manifest(load_rows(cfg.input, job.categories, cfg.skip_bad_rows))
        print(json.dumps({"manifest": str(job.out.manifest_path), "rows": n}))
        return 0
    check_weights(cfg)
    summary = job.run()
    print(json.dumps(asdict(summary), sort_keys=True))
    return 130 if summary.interrupted else 0
