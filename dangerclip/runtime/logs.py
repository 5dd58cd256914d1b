"""Logging set-up for a process's entry point (every command and the worker use the same format)."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int = 0, json_logs: bool = False) -> None:
    """Configure the root logger once, for a process's entry point."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    if json_logs:
        fmt = '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
