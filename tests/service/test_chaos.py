"""Chaos tests of the worker's contract against real parts: a tansu broker, ``python -m service.worker``
processes, real images, real HTTP.

The assertion is the same everywhere (``chaos.Verdict.problems`` empty): every acknowledged input gets at
least one result or dead letter, no worker crashes (SIGTERM exits 0), and no partition stalls (after the
faults stop, outstanding inputs reach zero within a bound and the committed offsets reach the end). The fault
is the parameter. Shape after Kafka's ``tests/kafkatest/tests/client/consumer_test.py``.
"""

from __future__ import annotations

import pytest

from tests.service.chaos import (
    ChurnConfig,
    Fleet,
    Verdict,
    image_stream,
    run_churn,
    verdict,
)
from tests.service.conftest import make_topics


def _explain(v: Verdict, fleet: Fleet) -> str:
    return "\n".join([v.summary(), *v.problems, "events:", *v.events, fleet.logs()])


# ---------------------------------------------------------------------------- fault 1: group churn
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("batch_size", "wait_ms"),
    [
        pytest.param(64, 2000, id="batch64-wait2000"),  # the setting of the bug report (71 of 3000 lost)
        pytest.param(16, 50, id="batch16-wait50"),  # the defaults
    ],
)
def test_group_churn_while_producing_loses_nothing(broker, model_path, tmp_path, batch_size, wait_ms):
    """Workers join, get SIGTERM and kill -9, and a plain consumer joins the group and leaves without
    committing, while a verifiable producer streams unique keys: every acknowledged key gets an outcome."""
    topics = make_topics(broker.bootstrap_servers)
    cfg = ChurnConfig(records=1000, events=8, batch_size=batch_size, wait_ms=wait_ms, rate_per_s=40.0,
                      interval_s=3.0, settle_s=45.0, seed=batch_size)
    v, fleet = run_churn(broker.bootstrap_servers, topics, model_path, tmp_path, cfg)
    assert not v.problems, _explain(v, fleet)
    assert len(v.events) >= cfg.events


# ---------------------------------------------------------------------------- helpers for the tests above
def test_image_stream_keys_are_unique():
    keys = [k for k, _, _ in image_stream("t", 500)]
    assert len(set(keys)) == 500 and all(isinstance(v, bytes) for _, v, _ in image_stream("t", 3))


def test_verdict_counts_missing_and_duplicates():
    from tests.service.chaos import Acked, Outcome

    class _L:
        error = None
        foreign: list = []

        def snapshot(self):  # noqa: ANN202
            o = Outcome("out", "result", None, 10.0, b"a")
            return {(0, 0): [o, o], (0, 2): [o]}

    acked = {(0, i): Acked(f"k{i}".encode(), 0, i, 9.0) for i in range(3)}
    v = verdict(acked, _L())  # type: ignore[arg-type]
    assert v.missing == [(0, 1)] and v.missing_keys == [b"k1"] and v.duplicates == 1
    assert v.worst_latency_s == pytest.approx(1.0) and v.problems
