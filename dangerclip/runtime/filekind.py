"""What a file is, by its content (not its name), so a message can say what the user passed and what was wanted.

``dangerclip score --model model.safetensors`` used to end in onnxruntime's ``INVALID_PROTOBUF`` traceback; with
:func:`expect` it says "this is a DangerCLIP checkpoint: export it with `dangerclip export`".
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from dangerclip.runtime.card import CARD_KEY
from dangerclip.runtime.errors import UserError

KINDS = {
    "onnx": "an ONNX model",
    "dangerclip-onnx": "a DangerCLIP ONNX model",
    "checkpoint": "a DangerCLIP checkpoint (safetensors)",
    "safetensors": "a safetensors file without a DangerCLIP card",
    "torch": "a PyTorch checkpoint (.pt/.pth)",
    "image": "an image",
    "manifest": "a manifest (JSON lines or CSV)",
    "json": "a JSON file",
    "directory": "a folder",
    "empty": "an empty file",
    "unknown": "a file of unknown kind",
}

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")

HINTS = {
    ("checkpoint", "onnx"): "export it first: dangerclip export {path} --out model.onnx",
    ("checkpoint", "dangerclip-onnx"): "export it first: dangerclip export {path} --out model.onnx",
    ("dangerclip-onnx", "checkpoint"): "an exported model cannot be re-exported or trained; pass its .safetensors",
    ("safetensors", "checkpoint"): "build a DangerCLIP checkpoint with dangerclip create or dangerclip train",
    ("missing", "onnx"): "export one (dangerclip export CHECKPOINT --out model.onnx) and mount it or bake it into "
    "the image at that path",
}


def _safetensors_kind(head: bytes, path: Path) -> str | None:
    if len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= 100_000_000 or head[8:9] != b"{":
        return None
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(min(n, 16 << 20))
    try:
        meta = json.loads(raw).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError):
        return None
    return "checkpoint" if CARD_KEY in meta else "safetensors"


def _onnx_kind(head: bytes, path: Path) -> str | None:
    # ModelProto: field 1 (ir_version, varint) comes first in every exporter's output: tag 0x08, a small version.
    if len(head) < 2 or head[0] != 0x08 or not 3 <= head[1] <= 30:
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        tail = f.read()  # metadata_props are written after the graph
    return "dangerclip-onnx" if CARD_KEY.encode() in tail else "onnx"


def _text_kind(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("{"):
        try:
            doc = json.loads(first)
        except ValueError:
            return "json" if text.lstrip().startswith("{") else None
        return "manifest" if isinstance(doc, dict) and ("image" in doc or "path" in doc) else "json"
    if first.startswith("[") or text.lstrip().startswith("{"):
        return "json"
    header = [c.strip().lower() for c in first.split(",")]
    if "image" in header or "path" in header:
        return "manifest"
    return None


def kind_of(path: str | Path) -> str:
    """One of :data:`KINDS`' keys, or ``missing``.

    Reads at most the first 64 KiB and (for ONNX) the last MiB; never parses a whole model.
    """
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "directory"
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        return "empty"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    for probe in (_safetensors_kind(head, p), _onnx_kind(head, p)):
        if probe:
            return probe
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return _text_kind(head) or "unknown"


def expect(path: str | Path, *wanted: str, what: str = "") -> str:
    """Check that ``path`` is one of the ``wanted`` kinds; else a :class:`UserError` that names both.

    Args:
        path: the file the user gave.
        wanted: acceptable kinds (:data:`KINDS` keys). ``onnx`` accepts ``dangerclip-onnx`` too.
        what: the option it was given as (``--model``), for the message.

    Returns:
        The kind found.
    """
    kind = kind_of(path)
    ok = set(wanted) | ({"dangerclip-onnx"} if "onnx" in wanted else set())
    if kind in ok:
        return kind
    label = f"{what} " if what else ""
    want = " or ".join(KINDS.get(w, w) for w in wanted)
    if kind == "missing":
        hint = HINTS.get(("missing", wanted[0]), "")
        raise UserError(f"{label}{path}: no such file (expected {want})" + (f"\n{hint}" if hint else ""))
    hint = next((HINTS[(kind, w)] for w in wanted if (kind, w) in HINTS), "")
    msg = f"{label}{path} is {KINDS.get(kind, kind)}, not {want}"
    raise UserError(msg + (f"\n{hint.format(path=path)}" if hint else ""))
