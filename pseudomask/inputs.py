"""The job's inputs: the dataset's rows, this process's shard of them, and the model card to match."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from dangerclip.runtime.card import CARD_KEY, ModelCard
from dangerclip.runtime.manifest import ManifestError, ManifestRow, manifest_from_folder, read_manifest

log = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based index, as Kubernetes' ``JOB_COMPLETION_INDEX``) → ``(I, N)``."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def shard_of(row_id: str, n: int) -> int:
    """The shard a row belongs to: stable across machines, runs and manifest order."""
    return int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:8], "big") % n


def load_card(path: str | Path) -> ModelCard:
    """The model card of a DangerCLIP ONNX file, safetensors checkpoint or card JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        d = json.loads(p.read_text(encoding="utf-8"))
        return ModelCard.from_dict(d.get("card", d) if isinstance(d, dict) else d)
    if suffix == ".onnx":
        import onnx

        m = onnx.load(str(p), load_external_data=False)
        meta = {kv.key: kv.value for kv in m.metadata_props}
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), "np") as f:
            meta = f.metadata() or {}
    else:
        raise ValueError(f"{p}: expected a .onnx, .safetensors or card .json file")
    if CARD_KEY not in meta:
        raise ValueError(f"{p} has no DangerCLIP model card (metadata key {CARD_KEY!r})")
    return ModelCard.from_json(meta[CARD_KEY])


def load_rows(input_path: str | Path, categories: Sequence[str], skip_bad: bool = False) -> list[ManifestRow]:
    """Rows of a manifest file or a ``<root>/<category or negative>/`` folder.

    Rows whose image exists but does not decode are kept (``check_images=False``): the job records them
    as failed with a reason. Rows that are wrong in themselves (missing file, unknown label) fail the whole
    read with every line listed, unless ``skip_bad``.
    """
    p = Path(input_path)
    if p.is_dir():
        return manifest_from_folder(p, list(categories))
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {p} (expected a manifest file or an image folder)")
    if skip_bad:
        try:
            return read_manifest(p, list(categories), check_images=False)
        except ManifestError as e:
            log.warning("%d bad manifest row(s) skipped, e.g. %s", len(e.issues), e.issues[0])
            return read_manifest(p, list(categories), check_images=False, skip_bad=True)
    return read_manifest(p, list(categories), check_images=False)


def shard_rows(rows: Sequence[ManifestRow], shard: tuple[int, int] | None) -> list[ManifestRow]:
    """The rows of shard ``(index, count)`` (all of them without a shard)."""
    if shard is None:
        return list(rows)
    i, n = shard
    return [r for r in rows if shard_of(r.id, n) == i]
