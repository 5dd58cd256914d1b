"""An ONNX file's ``metadata_props``, read without loading the model (no onnx package, no session).

A DangerCLIP export carries its model card there. Reading it first lets the scorer configure an execution
provider before building the session (TensorRT's shape profiles need the card's input size), and lets a tool
name a file's contents cheaply. Only the top-level ``ModelProto`` fields are walked; the graph (field 7, the
bulk of the file) is skipped by its length.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

_METADATA_PROPS = 14
_MAX_ENTRY = 64 << 20


def _varint(f: BinaryIO) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None if shift == 0 else -1
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            return -1


def _entry(data: bytes) -> tuple[str, str]:
    """A ``StringStringEntryProto``: field 1 key, field 2 value."""
    out = {1: b"", 2: b""}
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        if tag & 7 != 2:
            raise ValueError("unexpected wire type in metadata entry")
        out[tag >> 3] = data[i : i + n]
        i += n
    return out[1].decode("utf-8"), out[2].decode("utf-8")


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of the ONNX model at ``path`` (``{}`` when it has none).

    Raises:
        ValueError: the file is not a protobuf ``ModelProto`` as far as its top-level fields go.
    """
    props: dict[str, str] = {}
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        while True:
            tag = _varint(f)
            if tag is None:
                return props
            if tag < 0:
                raise ValueError(f"{path}: not an ONNX model (bad field tag)")
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(f) is None:
                    raise ValueError(f"{path}: truncated")
            elif wire == 2:
                n = _varint(f)
                if n is None or n < 0 or f.tell() + n > size:
                    raise ValueError(f"{path}: not an ONNX model (length past the end)")
                if field == _METADATA_PROPS and n <= _MAX_ENTRY:
                    key, value = _entry(f.read(n))
                    props[key] = value
                else:
                    f.seek(n, 1)
            elif wire == 5:
                f.seek(4, 1)
            elif wire == 1:
                f.seek(8, 1)
            else:
                raise ValueError(f"{path}: not an ONNX model (wire type {wire})")
