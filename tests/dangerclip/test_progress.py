"""Progress goes to logs as lines when stderr is not a terminal (a pod, a file), never as carriage returns."""

from __future__ import annotations

import subprocess
import sys

from tests.support.service import REPO

SCRIPT = """
import logging, sys
from dangerclip.runtime.logs import setup_logging
from dangerclip.runtime.progress import progress
setup_logging()
bar = progress(6, desc="train", unit="step", period_s=0.0)
for _ in range(6):
    bar.set_postfix(loss=0.5)
    bar.update()
bar.close()
"""


def test_without_a_terminal_progress_is_log_lines_with_rate_and_eta(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "wb") as err:
        subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, stderr=err, check=True, timeout=60)
    text = log.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if "train:" in line]
    assert len(lines) == 6, text  # one per update at period 0; close adds none when nothing is new
    assert "train: 6/6 step," in lines[-1] and "step/s, ETA 0 s, loss 0.5" in lines[-1]


def test_a_forced_bar_is_tqdm_and_a_forced_log_is_not():
    from dangerclip.runtime.progress import LogProgress, progress

    assert isinstance(progress(3, desc="x", enabled=False), LogProgress)
    bar = progress(3, desc="x", enabled=True)
    try:
        assert type(bar).__module__.startswith("tqdm")
    finally:
        bar.close()
