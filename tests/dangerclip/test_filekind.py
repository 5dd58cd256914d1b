"""Files are recognised by content, whatever their names say."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from dangerclip.runtime.errors import UserError, user_message
from dangerclip.runtime.filekind import expect, kind_of

DEMO = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "demo"


def _safetensors(path: Path, meta: dict[str, str]) -> Path:
    header = json.dumps({"__metadata__": meta, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    return path


def test_kinds_by_content_not_by_name(tmp_path):
    for fmt, name in (("PNG", "a.onnx"), ("JPEG", "b.safetensors"), ("WEBP", "c.bin"), ("GIF", "d"), ("TIFF", "e")):
        Image.new("RGB", (8, 8)).save(tmp_path / name, fmt)
        assert kind_of(tmp_path / name) == "image", fmt
    assert kind_of(DEMO / "model.onnx") == "dangerclip-onnx"
    assert kind_of(DEMO / "model.safetensors") == "checkpoint"
    assert kind_of(_safetensors(tmp_path / "plain.onnx", {"format": "pt"})) == "safetensors"
    (tmp_path / "m.txt").write_text('\n{"image": "a.jpg", "labels": []}\n')
    (tmp_path / "m.dat").write_text("image,label\na.jpg,gun\n")
    (tmp_path / "cfg").write_text('{\n  "a": 1\n}')
    (tmp_path / "zero").write_bytes(b"")
    (tmp_path / "noise").write_bytes(bytes(range(7, 200)))
    assert [kind_of(tmp_path / n) for n in ("m.txt", "m.dat", "cfg", "zero", "noise")] == [
        "manifest",
        "manifest",
        "json",
        "empty",
        "unknown",
    ]
    assert kind_of(tmp_path) == "directory" and kind_of(tmp_path / "nope") == "missing"


def test_expect_names_what_was_given_what_was_wanted_and_what_to_do(tmp_path):
    assert expect(DEMO / "model.onnx", "onnx") == "dangerclip-onnx"
    with pytest.raises(UserError) as e:
        expect(DEMO / "model.safetensors", "onnx", what="--model")
    msg = user_message(e.value)
    assert msg.startswith("--model ") and "is a DangerCLIP checkpoint (safetensors), not an ONNX model" in msg
    assert msg.splitlines()[1] == f"export it first: dangerclip export {DEMO / 'model.safetensors'} --out model.onnx"
    with pytest.raises(UserError, match="no such file"):
        expect(tmp_path / "x.onnx", "onnx")


def test_user_message_is_short_whatever_the_error():
    import pydantic

    class S(pydantic.BaseModel):
        max_batch_size: int
        topic: str

    with pytest.raises(pydantic.ValidationError) as e:
        S(max_batch_size="abc", topic=None)
    msg = user_message(e.value, env_prefix="DANGERCLIP_")
    assert msg.count("\n") == 0 and "pydantic.dev" not in msg
    assert msg.startswith("DANGERCLIP_MAX_BATCH_SIZE: Input should be a valid integer")
    assert "DANGERCLIP_TOPIC: Input should be a valid string" in msg
    assert (
        user_message(FileNotFoundError(2, "No such file or directory", "/m.onnx")) == "no such file or folder: /m.onnx"
    )
    long = user_message(ValueError("x" * 1000 + "\nsecond\nthird"))
    assert len(long) <= 400 and "third" not in long
