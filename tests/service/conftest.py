"""Fixtures for the service tests: unique topics per test, worker subprocesses, a local HTTP image server.
The broker is the session's one, from ``tests/conftest.py``; helpers are in ``tests.support.service``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import ImageServer, Topics, WorkerProcess, make_topics


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture
def topics(broker) -> Topics:
    return make_topics(broker.bootstrap_servers)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """A list to put started workers in; every one is killed at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def model_path(tiny_onnx_path: Path) -> Path:
    """The real exported tiny DangerCLIP (random weights) from the shared fixtures."""
    return tiny_onnx_path
