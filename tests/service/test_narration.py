"""The worker says what it is doing at the default log level: whom it connects to, that it joined and got
partitions, which model on which provider, and, while the brokers cannot be reached, one WARNING at growing
intervals with ``/readyz`` saying why. Credentials never reach the log. ``--max-seconds`` and SIGTERM hold from
the first second, bootstrap included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dangerclip_cli.embedded import free_port
from tests.support.service import REPO, WorkerProcess

pytestmark = pytest.mark.slow
SECRET = "hunter2-do-not-log"


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _serve(model, port: int, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DANGERCLIP_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DANGERCLIP_SASL_MECHANISM": "PLAIN",
        "DANGERCLIP_SASL_PLAIN_USERNAME": "moderation",
        "DANGERCLIP_SASL_PLAIN_PASSWORD": SECRET,
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "dangerclip_cli", "serve", "--model", str(model), "--metrics-port", str(port)]
    return subprocess.Popen(
        [*cmd, "--bootstrap-servers", f"127.0.0.1:{free_port()}", *extra],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_unreachable_brokers_are_one_warning_and_a_readyz_reason_and_max_seconds_holds(tiny_onnx_path):
    port = free_port()
    t0 = time.monotonic()
    p = _serve(tiny_onnx_path, port, "--max-seconds", "9")
    status, body = 0, ""
    while time.monotonic() - t0 < 7.5:
        try:
            status, body = _readyz(port)
        except OSError:
            pass
        time.sleep(0.3)
    err = p.communicate(timeout=30)[1]
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    assert took < 9 + 4, f"--max-seconds 9 ended after {took:.1f} s"
    assert status == 503 and "cannot reach the brokers" in body, (status, body)
    warnings = [line for line in err.splitlines() if " WARNING " in line and "cannot reach" in line]
    assert len(warnings) == 1, err  # the first after 5 s; the next not before 10 s more
    assert "connecting to 127.0.0.1:" in err and "SASL_PLAINTEXT" in err
    assert SECRET not in err and SECRET not in body


def test_sigterm_while_bootstrapping_ends_the_worker_within_seconds(tiny_onnx_path):
    p = _serve(tiny_onnx_path, free_port())
    time.sleep(2.5)  # model loaded, first bootstrap attempt under way
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=30)[1]
    assert p.returncode == 0 and time.monotonic() - t < 5, err
    assert "received SIGTERM" in err


def test_a_healthy_start_is_narrated_in_order(broker, topics, model_path, workers, tmp_path):
    w = WorkerProcess(broker.bootstrap_servers, topics, model_path, tmp_path)
    workers.append(w)
    w.wait_ready()
    log = w.log()
    steps = [
        "metrics and health on http://127.0.0.1:",
        "on CPUExecutionProvider",
        f"connecting to {broker.bootstrap_servers} (PLAINTEXT) as group {topics.group}",
        f"connected to {broker.bootstrap_servers}; joining group {topics.group} for {topics.input}",
        f"of {topics.input}; ready",
    ]
    at = [log.find(s) for s in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), (at, log[-3000:])
