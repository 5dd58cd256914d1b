"""``TrainConfig``: validation, round trips, config files (paths beside the file) and the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from training.config import TrainConfig, add_config_arguments, config_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_validate_names_every_bad_value() -> None:
    TrainConfig(data="d.jsonl").validate()
    bad = TrainConfig(data="", categories=["gun", "gun"], batch_size=0, lr=0.0, grayscale=1.5, amp="fp8",
                      threshold_target="recall", loss_weights=(1.0, 2.0))  # fmt: skip
    with pytest.raises(ValueError) as e:
        bad.validate()
    for name in ("data:", "categories", "batch_size", "lr", "grayscale", "loss_weights", "amp", "threshold_target"):
        assert name in str(e.value)


def test_no_dense_zeroes_the_dense_terms_and_dicts_round_trip() -> None:
    cfg = TrainConfig(data="d", loss_weights=(1, 3, 4))
    assert cfg.loss_weights == (1.0, 3.0, 4.0) and cfg.effective_loss_weights == (1.0, 3.0, 4.0)
    assert TrainConfig(dense=False).effective_loss_weights == (1.0, 0.0, 0.0)
    d = cfg.to_dict()
    assert d["loss_weights"] == [1.0, 3.0, 4.0] and json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown training config key.*'iters'.*known:"):
        TrainConfig.from_dict({"iters": 3})


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_files_load_with_paths_beside_the_file(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "clip.safetensors").write_bytes(b"")
    values = {"data": "train.jsonl", "out": "/abs/run", "pretrained": "clip.safetensors", "iterations": 7}
    path = folder / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    elif suffix == ".yaml":
        path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    else:
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    cfg = TrainConfig.from_file(path)
    assert cfg.data == str(folder / "train.jsonl") and cfg.out == "/abs/run" and cfg.iterations == 7
    assert cfg.pretrained == str(folder / "clip.safetensors")  # a file beside the config is rebased
    (folder / "tag.json").write_text(json.dumps({"pretrained": "openai"}))
    assert TrainConfig.from_file(folder / "tag.json").pretrained == "openai"  # an open_clip tag is not


def test_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.toml"):
        TrainConfig.from_file(tmp_path / "c.ini")
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping of TrainConfig fields"):
        TrainConfig.from_file(tmp_path / "c.json")


def test_command_line_overrides_the_file_and_leaves_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": "a.jsonl", "iterations": 7, "dense": True, "categories": ["gun"]}))
    cfg = config_from_args(_parse(str(path), "--iterations", "9", "--no-dense", "--loss-weights", "1", "0", "0"))
    assert (cfg.iterations, cfg.dense, cfg.loss_weights) == (9, False, (1.0, 0.0, 0.0))
    assert cfg.data == str(tmp_path / "a.jsonl") and cfg.categories == ["gun"] and cfg.lr == TrainConfig().lr
    cfg = config_from_args(_parse("--data", "b", "--categories", "gun", "knife", "--amp", "off"))
    assert (cfg.data, cfg.categories, cfg.amp) == ("b", ["gun", "knife"], "off")
    assert config_from_args(_parse()) == TrainConfig()


def test_every_field_has_an_option_with_its_docstring() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--min-lr-ratio MIN_LR_RATIO The cosine ends at ``lr * min_lr_ratio``. (default: 0.01)" in text
    assert "--calibrate-maps, --no-calibrate-maps" in text
    options = {a.dest for a in parser._actions}
    assert set(TrainConfig().to_dict()) <= options
