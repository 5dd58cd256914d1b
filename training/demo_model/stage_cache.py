"""A stage's record: what it was keyed on and what it produced (``<folder>/stage.json``, written last).

A stage is redone only when its key changes or its outputs are gone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dangerclip.runtime.files import write_json


def stage_key(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cached(folder: Path, key: dict[str, Any], outputs: list[str]) -> dict[str, Any] | None:
    """The saved record of a stage if it ran with the same key and its outputs are still there."""
    rec = folder / "stage.json"
    if not rec.is_file():
        return None
    saved = json.loads(rec.read_text())
    if saved.get("key") != stage_key(key) or not all((folder / o).exists() for o in outputs):
        return None
    return saved


def record(folder: Path, key: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's record (its key, the key's inputs and ``info``) and return it."""
    rec = {"key": stage_key(key), "inputs": key, **info}
    write_json(folder / "stage.json", rec)
    return rec


def key_of(folder: Path) -> str:
    """The key a finished stage's folder was made with (what a later stage depends on)."""
    return str(json.loads((folder / "stage.json").read_text())["key"])
