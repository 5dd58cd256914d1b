"""``dangerclip demo`` end to end: embedded broker, worker, sample images, summary, clean shutdown."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.service import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _demo(*args: str) -> subprocess.CompletedProcess:
    """``dangerclip demo ARGS`` in a fresh process, on a free metrics port, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "dangerclip_cli", "demo", "--metrics-port", "0", "--timeout", "90", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_demo_streams_the_images_and_shuts_down(tiny_onnx_path, sample_images_dir):
    n = len(list(sample_images_dir.iterdir()))
    r = _demo("--model", str(tiny_onnx_path), "--images", str(sample_images_dir), "--repeat", "2")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "embedded tansu broker on 127.0.0.1:" in out
    assert "THIS MODEL IS UNTRAINED" in out  # the random tiny model must say so
    assert re.search(rf"summary: {2 * n}/{2 * n} images scored", out), out
    assert re.search(r"p50 \d+ ms, p99 \d+ ms", out)
    assert re.search(r"Prometheus metrics: http://127\.0\.0\.1:\d+/metrics", out)
    assert len(re.findall(r"^  (FLAGGED|ok     ) ", out, re.M)) == 2 * n
    assert out.rstrip().endswith("shut down cleanly")


def test_demo_refuses_a_missing_model(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "dangerclip_cli", "demo", "--model", str(tmp_path / "no.onnx")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "model not found" in r.stderr + r.stdout


def test_demo_states_the_model_quality_from_its_card():
    from dangerclip_cli.demo import _held_out_quality

    metrics = {"test": {"n": 196, "weapon": {"f1": 0.68, "ap": 0.62, "threshold": 0.08}}}
    assert _held_out_quality(metrics) == "held-out test split (n=196) weapon: F1 0.68, AP 0.62, threshold 0.080"
    assert _held_out_quality({}) == ""


def test_the_bundled_demo_identifies_what_it_flags_with_the_bundled_assets():
    """What ``scripts/demo.sh`` runs: the demo model, the samples, and the identification assets (type head,
    embedder, catalogue) built by ``dangerclip demo-identify``."""
    pytest.importorskip("pdqhash")
    from dangerclip_cli.demo import IDENTIFY

    if not (IDENTIFY / "type_head.onnx").is_file():
        pytest.skip("no identification assets (dangerclip demo-identify)")
    r = _demo()
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    n_catalogue = len(list((IDENTIFY / "catalogue").glob("*.jpg")))
    assert f"catalogue index of {n_catalogue} firearm models (pdq + embedding)" in out
    flagged = len(re.findall(r"^  FLAGGED ", out, re.M))
    assert flagged and re.search(rf"{flagged} flagged \({flagged} identified\)", out)
    known = re.search(r"^  FLAGGED firearm_known_picture\.jpg.*\n\s+(.*)$", out, re.M)
    assert known and "KNOWN picture: pistol-00" in known.group(1)  # the re-encoded catalogue picture
