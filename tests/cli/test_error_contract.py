"""The error contract, for every command: a user mistake gives one or two plain lines, exit code 2, no traceback.

The table has an entry for every command in ``dangerclip_cli.main.COMMANDS``: a new command without its bad
inputs here fails ``test_every_command_is_in_the_table``. Commands run in this process through ``main(argv)``
(the same code path as the console script), so the table stays fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dangerclip_cli.main import COMMANDS, main

DEMO = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "demo"

# {command: [(case id, argv after the command, {env}, words the message must contain)]}
# Paths: {tmp} is a fresh folder; {img} a real PNG; {ckpt} a real DangerCLIP checkpoint; {onnx} a real export.
CASES: dict[str, list[tuple[str, list[str], dict[str, str], list[str]]]] = {
    "score": [
        ("missing model", ["--model", "{tmp}/nope.onnx", "{img}"], {}, ["nope.onnx"]),
        ("checkpoint as model", ["--model", "{ckpt}", "{img}"], {}, ["checkpoint", "dangerclip export"]),
        ("image as model", ["--model", "{img}", "{img}"], {}, ["image", "ONNX"]),
        ("bad option value", ["--model", "{onnx}", "--batch-size", "abc", "{img}"], {}, ["batch-size"]),
    ],
    "models": [("unknown option", ["--bogus"], {}, ["--bogus"])],
    "create": [("unknown config", ["--config", "nope", "--out", "{tmp}/x.safetensors"], {}, ["nope", "tiny"])],
    "export": [
        ("missing checkpoint", ["{tmp}/nope.safetensors", "--out", "{tmp}/x.onnx"], {}, ["nope.safetensors"]),
        ("image as checkpoint", ["{img}", "--out", "{tmp}/x.onnx"], {}, ["image", "checkpoint"]),
        ("onnx as checkpoint", ["{onnx}", "--out", "{tmp}/x.onnx"], {}, ["ONNX", "checkpoint"]),
        ("static int8, no images", ["{ckpt}", "--out", "{tmp}/x.onnx", "--int8-static"], {}, ["--calibration"]),
        (
            "static int8, one image",
            ["{ckpt}", "--out", "{tmp}/x.onnx", "--int8-static", "--calibration", "{img}"],
            {},
            ["at least 16", "got 1"],
        ),
    ],
    "serve": [
        ("bad setting", ["--max-seconds", "1"], {"DANGERCLIP_MAX_BATCH_SIZE": "abc"}, ["DANGERCLIP_MAX_BATCH_SIZE"]),
        ("checkpoint as model", ["--model", "{ckpt}", "--metrics-port", "0", "--max-seconds", "1"], {}, ["export"]),
    ],
    "demo": [
        ("missing model", ["--model", "{tmp}/nope.onnx"], {}, ["nope.onnx"]),
        ("missing images", ["--model", "{onnx}", "--images", "{tmp}/none"], {}, ["none"]),
    ],
    "doctor": [("bad option value", ["--timeout", "abc"], {}, ["--timeout"])],
    "schema": [("bad name", ["--name", "nope"], {}, ["nope"])],
    "synth": [("bad count", ["-n", "-5", "{tmp}/s"], {}, ["-5"])],
    "pretrain": [("missing manifest", ["{tmp}/none.jsonl", "-o", "{tmp}/w.safetensors"], {}, ["none.jsonl"])],
    "train": [("missing data", ["--data", "{tmp}/none", "--out", "{tmp}/run"], {}, ["none"])],
    "eval": [
        ("missing model", ["{tmp}/nope.safetensors", "{tmp}"], {}, ["nope.safetensors"]),
        ("image as model", ["{img}", "{tmp}"], {}, ["image"]),
    ],
    "baselines": [("missing data", ["{tmp}/none", "--out", "{tmp}/b"], {}, ["none"])],
    "demo-model": [("unknown config", ["--work", "{tmp}/w", "--model", "nope"], {}, ["nope"])],
    "demo-identify": [
        ("unknown backbone", ["--work", "{tmp}/w", "--assets", "{tmp}/a", "--type-backbone", "nope"], {}, ["nope"]),
        ("mae on a ResNet", ["--work", "{tmp}/w", "--assets", "{tmp}/a", "--type-method", "mae"], {}, ["ViT"]),
        ("too small", ["--work", "{tmp}/w", "--assets", "{tmp}/a", "--per-family", "1"], {}, ["3 models"]),
    ],
    "index": [
        ("missing index", ["stats", "--index", "{tmp}/none"], {}, ["none"]),
        ("missing images", ["build", "--index", "{tmp}/idx", "{tmp}/nowhere"], {}, ["nowhere"]),
    ],
    "firearms": [("too few models", ["{tmp}/fa", "--per-family", "1"], {}, ["per family"])],
    "retrieval": [("missing data", ["ablation", "--data", "{tmp}/none", "--out", "{tmp}/ab"], {}, ["none"])],
    "types": [
        ("missing data", ["train", "--data", "{tmp}/none", "--out", "{tmp}/t"], {}, ["none"]),
        ("unknown backbone", ["train", "--data", "{tmp}", "--out", "{tmp}/t", "--backbone", "nope"], {}, ["nope"]),
        (
            "mae on a ResNet",
            ["train", "--data", "{tmp}", "--out", "{tmp}/t", "--method", "mae", "--backbone", "resnet-small"],
            {},
            ["ViT", "resnet-small"],
        ),
        ("no action", [], {}, ["action"]),
    ],
    "pseudomask": [("missing input", ["{tmp}/none", "--out", "{tmp}/pm"], {}, ["none"])],
}


def test_every_command_is_in_the_table():
    assert set(CASES) == set(COMMANDS), "add the new command's bad inputs to CASES"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("contract")
    img = d / "img.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(img)
    return {"img": str(img), "ckpt": str(DEMO / "model.safetensors"), "onnx": str(DEMO / "model.onnx")}


PARAMS = [
    pytest.param(cmd, argv, env, words, id=f"{cmd}: {case}")
    for cmd, cases in CASES.items()
    for case, argv, env, words in cases
]


@pytest.mark.parametrize(("command", "argv", "env", "words"), PARAMS)
def test_a_user_mistake_is_one_or_two_lines_and_exit_code_2(
    command, argv, env, words, files, tmp_path, capsys, monkeypatch
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fill = {**files, "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in argv]
    try:
        code = main([command, *args])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and " WARNING " not in line and " INFO " not in line]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith(f"dangerclip {command}"), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def test_an_internal_error_says_so_keeps_its_traceback_and_exits_1(capsys, monkeypatch):
    from dangerclip.runtime.errors import run_command

    def broken(_args):
        raise ZeroDivisionError("a bug")

    assert run_command("x", broken, None, 0) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error (ZeroDivisionError: a bug)" in err


def test_with_verbose_a_user_mistake_shows_its_traceback_too(capsys):
    from dangerclip.runtime.errors import run_command

    def mistaken(_args):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/model.onnx")

    assert run_command("x", mistaken, None, 1) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("dangerclip x: no such file or folder: /nowhere/model.onnx")
