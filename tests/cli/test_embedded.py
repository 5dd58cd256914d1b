"""The embedded broker (demo, tests, benchmarks): waiting for its port, start, stop, restart on the same port."""

from __future__ import annotations

import socket
import time

import pytest

from dangerclip_cli.embedded import EmbeddedBroker, free_port, wait_for_port
from service.topics import ensure_topics


def test_wait_for_port_times_out_on_a_closed_port():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing listens"):
        wait_for_port("127.0.0.1", free_port(), timeout_s=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_embedded_broker_starts_stops_and_restarts_on_the_same_port(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        port = b.port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        ensure_topics(b.bootstrap_servers, {"before": 1})
        b.restart()
        assert b.port == port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        # Memory storage: a restart forgets topics (what the chaos suite's S3 variant exists for).
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=b.bootstrap_servers)
        try:
            assert "before" not in admin.list_topics()
        finally:
            admin.close()
    assert b.proc is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
