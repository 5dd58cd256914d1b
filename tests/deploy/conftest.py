"""Fixtures for the deployment tests; their helpers are in ``tests.support.deploy``."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: scripts/setup-system.sh should have installed it")
        pytest.skip("promtool not installed (run scripts/setup-system.sh as root)")
    return path
