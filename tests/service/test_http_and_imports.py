"""The health/metrics HTTP server, and the import boundary of ``service``."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from service.http import HealthServer
from service.metrics import METRIC_NAMES, Metrics
from tests.support.service import REPO, parse_metrics


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def test_metrics_health_and_readiness_over_http() -> None:
    m = Metrics()
    m.records_consumed.labels(topic="in").inc(3)
    state = {"ready": False}
    srv = HealthServer(
        m.registry,
        "127.0.0.1",
        0,
        lambda: (True, "ok"),
        lambda: (state["ready"], "ready" if state["ready"] else "no partitions"),
    ).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        code, ctype, body = _get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert parse_metrics(body)['dangerclip_records_consumed_total{topic="in"}'] == 3
        assert "_created" not in body
        assert _get(base + "/healthz")[0] == 200
        code, _, body = _get(base + "/readyz")
        assert code == 503 and "no partitions" in body
        state["ready"] = True
        assert _get(base + "/readyz")[0] == 200
        assert _get(base + "/nope")[0] == 404
    finally:
        srv.stop()


def test_metric_names_follow_conventions() -> None:
    m = Metrics()
    names = {mf.name for mf in m.registry.collect()}
    for n in METRIC_NAMES:
        assert n.startswith("dangerclip_")
        assert n.removesuffix("_total") in names  # prometheus_client strips _total from counter families
    counters = {mf.name for mf in m.registry.collect() if mf.type == "counter"}
    assert all(f"{c}_total" in METRIC_NAMES for c in counters)
    assert all(
        n.endswith(("_seconds", "_bytes", "_records", "dangerclip_score"))
        for mf in m.registry.collect()
        if mf.type == "histogram"
        for n in [mf.name]
    )


def test_service_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import service.worker, service.serve, service.delivery, service.checkpoint, dangerclip_cli.demo\n"
        "import service.messages, service.handler, service.http, service.budget\n"
        "import service.settings, service.metrics, service.fetch, service.topics, dangerclip_cli.embedded\n"
        "from service.serve import build\n"
        "import dangerclip.runtime.scorer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'open_clip',"
        " 'torchvision', 'pseudomask'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
