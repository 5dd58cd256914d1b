"""The compose stack, checked statically (no Docker here), and its moving parts run for real: the folder
producer against a real broker, and a worker configured exactly as compose configures it, scraped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import (
    DEPLOY,
    REPO,
    dashboard_queries,
    exported_names,
    grafana_to_promql,
    promql_metric_names,
    rule_exprs,
    scrape,
    settings_env_names,
)

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
PRODUCER = COMPOSE_DIR / "produce_folder.py"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` interpolation (``$$`` is a literal ``$``)."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, str(value)).replace("$$", "$")


def service_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(v, env or {}) for k, v in (SERVICES[name].get("environment") or {}).items()}


# ---------------------------------------------------------------------------- static
def test_stack_has_every_part() -> None:
    assert {"kafka", "topics", "worker", "doctor", "producer", "prometheus", "grafana"} <= set(SERVICES)
    kafka = SERVICES["kafka"]["environment"]
    assert "broker,controller" in kafka["KAFKA_PROCESS_ROLES"], "single-node KRaft, no ZooKeeper"
    assert "zookeeper" not in json.dumps(COMPOSE).lower()
    assert SERVICES["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    """Validated as Compose validates them: after interpolation (defaults), against the spec's JSON Schema."""
    import jsonschema

    schema = json.loads((Path(__file__).parent / "data" / "compose_spec.json").read_text())
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    doc = yaml.safe_load(interpolate((COMPOSE_DIR / name).read_text(), {}))
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert not errors, errors
    broken = json.loads(json.dumps(doc))
    broken["services"]["worker"]["cap_drops"] = ["ALL"]
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken)), "the schema must catch a misspelt key"


def test_bind_mounts_and_build_files_exist() -> None:
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = interpolate(vol.split(":")[0], {})
            if src.startswith((".", "/")):
                assert (COMPOSE_DIR / src).exists(), f"{name} mounts {src}, which does not exist"
    build = SERVICES["worker"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).exists()
    assert interpolate(SERVICES["producer"]["image"], {}) == interpolate(SERVICES["worker"]["image"], {})


def test_worker_env_is_worker_settings() -> None:
    for name in ("worker", "topics", "producer", "doctor"):
        env = service_env(name)
        dangerclip = {k for k in env if k.startswith("DANGERCLIP_")}
        assert dangerclip <= settings_env_names(), f"{name}: {dangerclip - settings_env_names()}"
    doctor = SERVICES["doctor"]
    assert doctor["command"][0] == "doctor" and doctor["image"] == SERVICES["worker"]["image"]
    assert {k: v for k, v in service_env("doctor").items() if "TOPIC" in k or "GROUP" in k} == {
        k: v for k, v in service_env("worker").items() if "TOPIC" in k or "GROUP" in k
    }, "the doctor checks the workers' topics and group"
    env = service_env("worker")
    assert env["DANGERCLIP_METRICS_HOST"] == "0.0.0.0"
    assert env["DANGERCLIP_MODEL_PATH"] == "/models/model.onnx"


def test_worker_is_hardened_and_drains_on_stop() -> None:
    w = SERVICES["worker"]
    assert w["read_only"] is True and w["cap_drop"] == ["ALL"] and "/tmp" in w["tmpfs"]
    assert "no-new-privileges:true" in w["security_opt"]
    grace = int(w["stop_grace_period"].rstrip("s"))
    from service.settings import Settings

    assert grace > Settings.model_fields["shutdown_timeout_s"].default


def test_published_ports_are_loopback_only() -> None:
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_prometheus_gets_the_generated_alerts() -> None:
    vols = SERVICES["prometheus"]["volumes"]
    assert "../prometheus/alerts.yaml:/etc/prometheus/rules/dangerclip-alerts.yaml:ro" in vols
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yaml"]


# ---------------------------------------------------------------------------- real broker
def _topics(bootstrap: str, partitions: int = 2) -> dict[str, str]:
    from service.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    names = {
        "DANGERCLIP_INPUT_TOPIC": f"img-{tag}",
        "DANGERCLIP_OUTPUT_TOPIC": f"scores-{tag}",
        "DANGERCLIP_DEAD_LETTER_TOPIC": f"dlq-{tag}",
        "DANGERCLIP_GROUP_ID": f"group-{tag}",
    }
    ensure_topics(
        bootstrap,
        {
            names["DANGERCLIP_INPUT_TOPIC"]: partitions,
            names["DANGERCLIP_OUTPUT_TOPIC"]: partitions,
            names["DANGERCLIP_DEAD_LETTER_TOPIC"]: 1,
        },
    )
    return names


def _consume(bootstrap: str, topic: str, want: int, timeout_s: float = 60.0) -> list[Any]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
    )
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for msg in c:
                got.append(msg)
                if len(got) >= want:
                    break
    finally:
        c.close()
    return got


def _run_producer(folder: Path, bootstrap: str, topic: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(PRODUCER),
            "--folder",
            str(folder),
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            topic,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_producer_streams_a_folder_raw_and_as_envelopes(broker: Any, sample_images_dir: Path) -> None:
    bootstrap = broker.bootstrap_servers
    topic = _topics(bootstrap)["DANGERCLIP_INPUT_TOPIC"]
    files = sorted(p for p in sample_images_dir.iterdir() if p.suffix in (".jpg", ".png"))
    out = _run_producer(sample_images_dir, bootstrap, topic)
    assert out.returncode == 0, out.stderr
    out = _run_producer(sample_images_dir, bootstrap, topic, "--envelope", "--repeat", "2")
    assert out.returncode == 0, out.stderr
    msgs = _consume(bootstrap, topic, want=3 * len(files))
    assert len(msgs) == 3 * len(files)
    raw = {m.key.decode(): m for m in msgs if dict(m.headers)["content-type"] != b"application/json"}
    assert set(raw) == {p.name for p in files}
    for p in files:
        assert raw[p.name].value == p.read_bytes()
        assert dict(raw[p.name].headers)["content-type"] == (b"image/png" if p.suffix == ".png" else b"image/jpeg")
    env_ids = sorted(json.loads(m.value)["id"] for m in msgs if dict(m.headers)["content-type"] == b"application/json")
    assert env_ids == sorted([p.name for p in files] + [p.name + "#1" for p in files])


def test_producer_fails_on_an_empty_folder(broker: Any, tmp_path: Path) -> None:
    out = _run_producer(tmp_path, broker.bootstrap_servers, "unused")
    assert out.returncode != 0 and "no image files" in out.stderr


@pytest.mark.slow
def test_compose_worker_end_to_end_and_its_scrape_has_every_dashboard_metric(
    broker: Any, tiny_onnx_path: Path, sample_images_dir: Path, tmp_path: Path
) -> None:
    """A worker with compose's environment (broker, topics, model and port swapped for local ones) scores
    the producer's images; its real ``/metrics`` has every metric the dashboard and the alerts use."""
    from dangerclip_cli.embedded import free_port

    bootstrap = broker.bootstrap_servers
    topics = _topics(bootstrap)
    folder = tmp_path / "images"
    shutil.copytree(sample_images_dir, folder)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG\n" * 20)
    n_good = sum(1 for p in sample_images_dir.iterdir() if p.suffix in (".jpg", ".png"))

    port = free_port()
    env = dict(os.environ)
    env.update(service_env("worker", topics))
    env.update(
        {
            "DANGERCLIP_BOOTSTRAP_SERVERS": bootstrap,
            "DANGERCLIP_MODEL_PATH": str(tiny_onnx_path),
            "DANGERCLIP_METRICS_HOST": "127.0.0.1",
            "DANGERCLIP_METRICS_PORT": str(port),
            "DANGERCLIP_INTRA_OP_THREADS": "1",
            "DANGERCLIP_SESSION_TIMEOUT_MS": "6000",
            "DANGERCLIP_HEARTBEAT_INTERVAL_MS": "1000",
            "OMP_NUM_THREADS": "1",
        }
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dangerclip_cli", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                scrape(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "worker not ready:\n" + log_path.read_text()[-3000:]
                time.sleep(0.3)
        out = _run_producer(folder, bootstrap, topics["DANGERCLIP_INPUT_TOPIC"])
        assert out.returncode == 0, out.stderr
        results = _consume(bootstrap, topics["DANGERCLIP_OUTPUT_TOPIC"], want=n_good)
        dead = _consume(bootstrap, topics["DANGERCLIP_DEAD_LETTER_TOPIC"], want=1)
        assert sorted(m.key.decode() for m in results) == sorted(
            p.name for p in sample_images_dir.iterdir() if p.suffix in (".jpg", ".png")
        )
        assert [m.key for m in dead] == [b"broken.jpg"]

        text = scrape(f"http://127.0.0.1:{port}/metrics")
        names = exported_names(text)
        dashboard = json.loads((DEPLOY / "grafana/dashboards/dangerclip.json").read_text())
        used = set().union(*(promql_metric_names(q) for q in dashboard_queries(dashboard)))
        used |= set().union(
            *(
                promql_metric_names(e)
                for e in rule_exprs(yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text()))
            )
        )
        assert not used - names - {"up"}, f"not in a real worker's /metrics: {sorted(used - names - {'up'})}"
        assert re.search(rf"^dangerclip_results_produced_total\{{[^}}]*\}} {n_good}\.0$", text, re.M), text
        assert re.search(r'^dangerclip_dead_letters_total\{[^}]*reason="not_an_image"[^}]*\} 1\.0$', text, re.M)
        assert "dangerclip_model_info{" in text

        # A real Prometheus scrapes the worker, runs every dashboard query and evaluates the alert rules.
        if shutil.which("prometheus"):
            _check_with_real_prometheus(port, dashboard, tmp_path)
        elif os.environ.get("CI"):
            pytest.fail("prometheus missing in CI: scripts/setup-system.sh installs Debian's prometheus")

        # docker compose stop: SIGTERM, then the grace period.
        proc.send_signal(signal.SIGTERM)
        grace = int(COMPOSE["services"]["worker"]["stop_grace_period"].rstrip("s"))
        assert proc.wait(grace) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_gpu_override_swaps_in_the_gpu_image() -> None:
    gpu = yaml.safe_load((COMPOSE_DIR / "compose.gpu.yaml").read_text())["services"]
    w = gpu["worker"]
    assert (COMPOSE_DIR / w["build"]["context"] / w["build"]["dockerfile"]).name == "serve-gpu.Dockerfile"
    assert (COMPOSE_DIR / w["build"]["context"] / w["build"]["dockerfile"]).exists()
    assert set(w["environment"]) <= settings_env_names()
    (dev,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert gpu["producer"]["image"] == w["image"], "the producer must not need the CPU image built"


def _check_with_real_prometheus(worker_port: int, dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Prometheus (Debian's, beside promtool) scrapes the worker every second with the compose job name and
    loads the alert rules; every dashboard query must run, the core panels must have data, every rule must be
    healthy."""
    import urllib.parse

    from dangerclip_cli.embedded import free_port

    prom_port = free_port()
    (compose_job,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    rule_files = [str(DEPLOY / "prometheus" / "alerts.yaml")]
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": compose_job["job_name"],
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                # The compose job's own relabelling (the namespace label every rule selects on).
                "relabel_configs": compose_job["relabel_configs"],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def get(path: str, **params: str) -> Any:
        doc = json.loads(scrape(f"{api}/{path}?{urllib.parse.urlencode(params)}"))
        assert doc["status"] == "success", doc
        return doc["data"]

    try:
        deadline = time.monotonic() + 30
        while True:  # ready, and enough scrapes for a rate over a short window
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                scrapes = get("query", query='count_over_time(up{job="dangerclip"}[1m])')["result"]
                if scrapes and float(scrapes[0]["value"][1]) >= 5:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        (namespace,) = [r["replacement"] for r in compose_job["relabel_configs"] if r["target_label"] == "namespace"]
        variables = {
            "$__rate_interval": "10s",
            "$namespace": namespace,
            "$job": "dangerclip",
            "$instance": ".*",
            "$category": ".*",
        }
        empty = []
        for q in dashboard_queries(dashboard):
            if q.startswith("label_values("):
                metric = promql_metric_names(q).pop()
                assert get("series", **{"match[]": metric}), f"no series for variable query {q}"
                continue
            if not get("query", query=grafana_to_promql(q, variables))["result"]:
                empty.append(q)
        # Queries over things that did not happen here (commit failures, abandoned records, a model change)
        # may be empty; the panels the issue names must not be.
        # So may a series filtered to trouble (`... and on(...) lag > 0`: commit age of partitions with records
        # waiting, none on a caught-up worker).
        panel_queries = {t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])}
        empty = [q for q in empty if q in panel_queries and not re.search(r"\)\s+(and|unless)\s+on\(", q)]
        for must in (
            "dangerclip_records_consumed_total",
            "dangerclip_results_produced_total",
            "dangerclip_dead_letters_total",
            "dangerclip_consumer_lag_records",
            "dangerclip_inference_duration_seconds_bucket",
            "dangerclip_score_bucket",
            "dangerclip_model_info",
        ):
            assert not [q for q in empty if must in q], f"empty on a real worker: {[q for q in empty if must in q]}"
        groups = get("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        want = [
            r["alert"] for f in rule_files for g in yaml.safe_load(Path(f).read_text())["groups"] for r in g["rules"]
        ]
        assert sorted(r["name"] for r in rules) == sorted(want)
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
        # On a healthy worker that owns every partition, polls and commits, no stall alert is even pending:
        # the rules read the real gauges as the worker sets them (unix times, partition counts).
        stalls = {
            "DangerCLIPNoScrapeTargets",
            "DangerCLIPPartitionsUnassigned",
            "DangerCLIPNotPolling",
            "DangerCLIPPartitionStalled",
            "DangerCLIPCircuitOpen",
            "DangerCLIPWorkerDown",
        }
        assert stalls <= set(want)
        active = {r["name"]: r["state"] for r in rules if r["name"] in stalls and r["state"] != "inactive"}
        assert not active, active
    finally:
        prom.terminate()
        prom.wait(20)
        log.close()
