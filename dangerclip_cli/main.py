"""The ``dangerclip`` command: the umbrella above every package.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen subcommand's module is imported, so ``dangerclip serve`` never loads torch or training code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple, NoReturn

from dangerclip.runtime.errors import EXIT_USER_ERROR, run_command
from dangerclip.runtime.logs import setup_logging, split_verbose


class Command(NamedTuple):
    module: str
    extra: str
    help: str


COMMANDS: dict[str, Command] = {
    "score": Command("dangerclip.runtime.score_cli", "", "score image files with an ONNX model; JSON lines out"),
    "models": Command("dangerclip.modeling.factory", "train", "list the model configs"),
    "create": Command("dangerclip.modeling.checkpoint", "train", "build a checkpoint (zero-shot or untrained head)"),
    "export": Command("dangerclip.modeling.export", "train", "export a checkpoint to ONNX (fp32/fp16/int8)"),
    "serve": Command("service.serve", "serve", "run a Kafka scoring worker"),
    "demo": Command("dangerclip_cli.demo", "serve", "stream the sample images through an embedded broker"),
    "doctor": Command("service.doctor", "serve", "check settings, model, brokers, topics, group and ports"),
    "schema": Command("service.messages", "serve", "write the JSON Schemas of the Kafka messages"),
    "synth": Command("training.synth", "train", "generate the synthetic weapon/distractor dataset"),
    "pretrain": Command("training.pretrain", "train", "contrastive pre-training of a tiny CLIP"),
    "train": Command("training.train", "train", "train a DangerCLIP head on frozen CLIP"),
    "eval": Command("training.evaluate", "train", "evaluate a checkpoint on a manifest"),
    "baselines": Command("training.baselines", "train", "ResNet-50 / VGG-16 / zero-shot CLIP comparison rows"),
    "demo-model": Command("training.demo_model", "train", "build the offline demo model"),
    "demo-identify": Command("training.demo_identify", "train", "build the identification stage's demo assets"),
    "index": Command("dangerclip.runtime.index.cli", "index", "known-content index: PDQ hashes, hash banks, queries"),
    "firearms": Command("training.firearms.cli", "train", "generate the synthetic fine-grained firearm set"),
    "retrieval": Command("training.retrieval.cli", "train", "DeepFirearm retrieval: the ablation table"),
    "types": Command("training.ssl.cli", "train", "firearm-type head: SSL pre-training, probe, fine-tune, compare"),
    "pseudomask": Command("pseudomask.cli", "pseudomask", "GroundingDINO + SAM pseudo-masks for a dataset"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: dangerclip [-v] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "'dangerclip COMMAND --help' describes a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    verbose, args = split_verbose(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name in ("-V", "--version"):
        from dangerclip import __version__

        print(__version__)
        return 0
    cmd = COMMANDS.get(name)
    if cmd is None:
        print(f"dangerclip: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(cmd.module)
    except ModuleNotFoundError as e:
        hint = f" (pip install 'dangerclip[{cmd.extra}]')" if cmd.extra else ""
        print(f"dangerclip {name}: cannot import {e.name!r}{hint}", file=sys.stderr)
        return 2
    parser = Parser(prog=f"dangerclip {name}", description=cmd.help)
    module.add_arguments(parser)
    ns = parser.parse_args(rest)
    setup_logging(verbose, json_logs=bool(getattr(ns, "json_logs", False)))
    return run_command(name, module.run, ns, verbose, env_prefix="DANGERCLIP_" if name == "serve" else "")


class Parser(argparse.ArgumentParser):
    """argparse with the contract's short error: one line and a pointer to ``--help``, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message} (see '{self.prog} --help')\n")


if __name__ == "__main__":
    sys.exit(main())
