"""Files that readers never see half-written: a temporary file in the same folder, then a rename.

A rename within one folder is atomic on POSIX and Windows, so a crash leaves either the old file or the new
one. Every run folder, cache, manifest and checkpoint the training and pseudo-mask commands write goes
through here; JSON goes through ``jsonable`` first, so NaN metrics are written as ``null``, not as the
``NaN`` that strict JSON readers refuse.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``torch.save``, ``np.savez``).

    The temporary name ends in ``path``'s suffix, so writers that add one (``np.savez``) leave it alone. On
    success it replaces ``path``; on any error it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name, created by the writer itself, so the file gets the usual permissions (not mkstemp's 0600).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists, paths as strings and NaN as None (JSON's
    ``null``)."""
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(path: str | Path, obj: Any, *, indent: int = 1, sort_keys: bool = False) -> Path:
    """``obj`` (through ``jsonable``) as an indented JSON file with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys) + "\n")
    return Path(path)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON document per line (a manifest, a results log), written atomically."""
    atomic_write_text(path, "".join(json.dumps(jsonable(r)) + "\n" for r in rows))
    return Path(path)
