"""Logging set-up for a process's entry point (every command and the worker use the same format)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

DEBUG_ENV = "DANGERCLIP_DEBUG"
"""Comma-separated logger names to log at DEBUG without turning DEBUG on everywhere (``service.delivery``)."""


def setup_logging(verbose: int = 0, json_logs: bool = False) -> None:
    """Configure the root logger once, for a process's entry point: INFO, or DEBUG with ``verbose``; the loggers
    named in ``$DANGERCLIP_DEBUG`` at DEBUG either way."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    if json_logs:
        fmt = '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    for name in filter(None, (n.strip() for n in os.environ.get(DEBUG_ENV, "").split(","))):
        logging.getLogger(name).setLevel(logging.DEBUG)


def split_verbose(argv: Sequence[str]) -> tuple[int, list[str]]:
    """Leading ``-v``/``--verbose`` flags counted off the front of a command line: ``(count, the rest)``."""
    args = list(argv)
    verbose = 0
    while args and args[0] in ("-v", "--verbose"):
        verbose += 1
        args.pop(0)
    return verbose, args
