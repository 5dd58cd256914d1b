"""``dangerclip demo-identify`` on a tiny configuration: both served models, the catalogue, the samples and the report
come out, and the demo built on them identifies what it flags."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.service import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dangerclip_cli.main import main

    root = tmp_path_factory.mktemp("identify")
    args = ["demo-identify", "--work", str(root / "work"), "--assets", str(root / "assets"), "--per-family", "3"]
    args += ["--images-per-model", "8", "--size", "48", "--type-epochs", "1", "--type-finetune-epochs", "1"]
    assert main([*args, "--retrieval-cls-epochs", "1", "--retrieval-pair-epochs", "1"]) == 0
    return root / "assets"


def test_the_build_writes_both_models_the_catalogue_and_the_samples(tiny_assets: Path):
    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.typehead import TypeHead

    head, emb = TypeHead(tiny_assets / "type_head.onnx"), Embedder(tiny_assets / "embedder.onnx")
    assert len(head.card.classes) == 8 and set(head.card.look_alike) == {"toy", "alarm", "airsoft"}
    assert emb.card.image_size == 48 and emb.card.dim == 256
    assert len(list((tiny_assets / "catalogue").glob("*.jpg"))) == 18  # one picture per model, 3 per family
    report = json.loads((tiny_assets / "report.json").read_text())
    assert set(report["samples"]) == {p.name for p in (tiny_assets / "samples").glob("*.jpg")}
    assert report["types"]["classes"] == head.card.classes
    assert "Synthetic pictures only" in (tiny_assets / "report.md").read_text()


def test_the_demo_identifies_what_it_flags_and_knows_the_catalogued_picture(tiny_assets: Path, monkeypatch):
    """The demo run in-process with the tiny assets in place of the bundled ones."""
    from dangerclip.runtime.index.pdq import DEFAULT_THRESHOLD, hamming, pdq_hash
    from dangerclip.runtime.preprocess import load_image

    pytest.importorskip("pdqhash")
    known = tiny_assets / "samples" / "firearm_known_picture.jpg"
    ref = tiny_assets / "catalogue" / "pistol-00.jpg"
    assert hamming(pdq_hash(load_image(known))[0], pdq_hash(load_image(ref))[0]) <= DEFAULT_THRESHOLD
    code = (
        "import sys, dangerclip_cli.demo as d; from pathlib import Path; "
        f"d.IDENTIFY = Path({str(tiny_assets)!r}); from dangerclip_cli.main import main; "
        "sys.exit(main(['demo', '--metrics-port', '0', '--timeout', '90']))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "identification of flagged images: type head" in out and "catalogue index of 18 firearm models" in out
    lines = out.splitlines()
    flagged = [i for i, line in enumerate(lines) if line.startswith("  FLAGGED ")]
    assert flagged and all(lines[i + 1].lstrip().startswith("type ") for i in flagged)
    assert all("nearest catalogued " in lines[i + 1] for i in flagged)
    n = len(flagged)
    assert re.search(rf"{n} flagged \({n} identified\)", out)
    for i in flagged:
        if "firearm_known_picture.jpg" in lines[i]:
            assert "KNOWN picture: pistol-00" in lines[i + 1]
    assert "firearm_known_picture.jpg" in out  # the identification samples were streamed too
