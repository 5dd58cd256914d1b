"""``dangerclip demo`` end to end: embedded broker, worker, sample images, summary, clean shutdown."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.service import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_demo_streams_the_images_and_shuts_down(tiny_onnx_path, sample_images_dir):
    n = len(list(sample_images_dir.iterdir()))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dangerclip_cli",
            "demo",
            "--model",
            str(tiny_onnx_path),
            "--images",
            str(sample_images_dir),
            "--metrics-port",
            "0",
            "--repeat",
            "2",
            "--timeout",
            "90",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
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
