"""The helpers every command shares: device and signals, atomic files, options from a dataclass, exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from dangerclip.modeling.device import map_in_processes, resolve_device, stop_on_signal, torch_threads
from dangerclip.runtime.commandline import (
    add_options,
    comma_list,
    command_line,
    exits_2_on_bad_input,
    field_docs,
    given_options,
)
from dangerclip.runtime.files import atomic_path, atomic_write_text, jsonable, write_json, write_jsonl


def test_sigterm_asks_the_loop_to_stop_after_the_step() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signal() as flag:
        assert not flag["stop"]
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the process goes on, the loop sees the flag
        assert flag["stop"]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_accelerators_fall_back_to_the_cpu() -> None:
    assert resolve_device("cuda").type == "cpu"
    assert resolve_device("cuda:1").type == "cpu"
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"


def test_thread_count_is_given_back() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _square(x: int) -> int:
    return x * x


def test_map_in_processes_keeps_the_order() -> None:
    assert map_in_processes(_square, [3, 1, 2], workers=1) == [9, 1, 4]


def test_atomic_path_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npz"
        np.savez(tmp, x=np.arange(3))  # np.savez keeps a name that already ends in .npz
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("writer died")
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in target.parent.iterdir()] == ["a.npz"]  # no temporary left behind
    atomic_write_text(tmp_path / "t.txt", "é")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é"
    assert oct((tmp_path / "t.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_json_files_are_strict_json(tmp_path: Path) -> None:
    obj = {"nan": float("nan"), "np": np.float32(0.5), "i": np.int64(3), "t": (1, 2), "p": Path("a/b"), 4: "k"}
    assert jsonable(obj) == {"nan": None, "np": 0.5, "i": 3, "t": [1, 2], "p": "a/b", "4": "k"}
    text = write_json(tmp_path / "x.json", obj, indent=2).read_text()
    assert text.endswith("}\n") and json.loads(text)["nan"] is None
    lines = write_jsonl(tmp_path / "m.jsonl", [{"a": 1}, {"b": math.inf - math.inf}]).read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"a": 1}, {"b": None}]


@dataclass
class _Config:
    """A config as every command writes them."""

    data: str = ""
    """Where the rows come from."""
    steps: int = 10
    """Optimiser steps: 100% of them."""
    rate: float | None = None
    """A rate,
    over two lines."""
    dense: bool = True
    """Train the dense terms."""
    names: list[str] = field(default_factory=lambda: ["weapon"])
    """Categories."""
    weights: tuple[float, float] = (1.0, 2.0)
    """Two weights."""


def test_options_come_from_the_fields_and_their_docstrings() -> None:
    assert field_docs(_Config)["rate"] == "A rate, over two lines."
    parser = argparse.ArgumentParser()
    add_options(parser, _Config, positional=["data"], custom={"names": {"type": comma_list, "nargs": None}})
    assert "Optimiser steps: 100% of them. (default: 10)" in " ".join(parser.format_help().split())
    args = parser.parse_args(
        ["rows.jsonl", "--steps", "3", "--no-dense", "--names", "gun,knife", "--weights", "1", "3"]
    )
    assert given_options(_Config, args) == {
        "data": "rows.jsonl",
        "steps": 3,
        "dense": False,
        "names": ["gun", "knife"],
        "weights": [1.0, 3.0],
    }
    # Options not given stay unset, so the dataclass (or a config file) keeps its values.
    assert given_options(_Config, parser.parse_args(["x"])) == {"data": "x"}
    nested = argparse.ArgumentParser()
    add_options(nested, _Config, only=["steps", "dense"], prefix="head", flags={"dense": ("--head-dense", "--dense")})
    ns = nested.parse_args(["--head-steps", "4", "--no-dense"])
    assert given_options(_Config, ns, prefix="head") == {"steps": 4, "dense": False}


def test_command_line_names_only_what_differs_from_the_defaults() -> None:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out")
        add_options(parser, _Config, only=["steps", "dense", "names"])
        parser.add_argument("--force", action="store_true")

    args = argparse.ArgumentParser()
    add(args)
    ns = args.parse_args(["my dir", "--steps", "5", "--no-dense", "--force"])
    assert command_line("dangerclip x", add, ns) == "dangerclip x 'my dir' --steps 5 --no-dense --force"


def test_bad_input_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    @exits_2_on_bad_input("thing")
    def run(args: argparse.Namespace) -> int:
        raise FileNotFoundError(f"no such file: {args.path}")

    assert run(argparse.Namespace(path="x.jsonl")) == 2
    assert capsys.readouterr().err == "dangerclip thing: no such file: x.jsonl\n"

    @exits_2_on_bad_input("thing")
    def crash(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug is not bad input")

    with pytest.raises(RuntimeError):
        crash(argparse.Namespace())
