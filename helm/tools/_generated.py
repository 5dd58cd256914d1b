"""Write a generated file, or with ``--check`` report that it is stale: shared by the tools in this folder."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, check: bool, tool: str) -> int:
    """Exit status for a generator's ``main``: with ``check``, 1 when ``path`` differs from ``text``."""
    current = path.read_text() if path.exists() else None
    if check:
        if current != text:
            sys.stderr.write(f"{path} is stale; rerun {tool}\n")
            return 1
        return 0
    path.write_text(text)
    sys.stdout.write(f"wrote {path}\n")
    return 0
