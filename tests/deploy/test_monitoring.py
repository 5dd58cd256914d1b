"""Alert rules (promtool) and the Grafana dashboard, against what the worker really exports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    DEPLOY,
    dashboard_queries,
    exported_names,
    grafana_to_promql,
    load_values,
    one,
    promql_metric_names,
    render,
    rule_exprs,
    scrape,
)

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dangerclip.json"
# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent)


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    out = _promtool(promtool, "check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    out = _promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_the_issue_asks_for_exists_and_is_unit_tested() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    wanted = {
        "DangerCLIPConsumerLagGrowing",
        "DangerCLIPDeadLetterRateHigh",
        "DangerCLIPNoResults",
        "DangerCLIPWorkerDown",
        "DangerCLIPInferenceP99High",
    }
    assert wanted <= set(rules)
    tested = {
        t["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t.get("exp_alerts")
    }
    assert set(rules) <= tested, f"alerts with no firing unit test: {set(rules) - tested}"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_prometheus_config_loads_the_rules_and_scrapes_workers(promtool: str) -> None:
    cfg_path = DEPLOY / "prometheus" / "prometheus.yml"
    out = _promtool(promtool, "check", "config", str(cfg_path))
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load(cfg_path.read_text())
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "dangerclip", 'the alert rules and dashboard select job="dangerclip"'
    assert job["dns_sd_configs"][0]["names"] == ["worker"] and job["dns_sd_configs"][0]["port"] == 9108


# ---------------------------------------------------------------------------- names vs a real scrape
@pytest.fixture(scope="module")
def scraped_names() -> set[str]:
    """Names in ``/metrics`` served by the worker's own HTTP server, every metric family touched once."""
    from prometheus_client.metrics import MetricWrapperBase

    from service.http import HealthServer
    from service.metrics import Metrics

    m = Metrics()
    for attr in vars(m).values():
        if not isinstance(attr, MetricWrapperBase):
            continue
        labelnames = getattr(attr, "_labelnames", ())
        child = attr.labels(*["x"] * len(labelnames)) if labelnames else attr
        if hasattr(child, "observe"):
            child.observe(0.3)
        elif hasattr(child, "inc"):
            child.inc()
        else:
            child.set(1)
    m.set_model(
        name="tiny", version="0.1.0", sha256="ab" * 32, provider="CPUExecutionProvider", mode="trained", trained=False
    )
    server = HealthServer(m.registry, "127.0.0.1", 0, alive=lambda: (True, "ok"), ready=lambda: (True, "ok"))
    server.start()
    try:
        text = scrape(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    return exported_names(text, samples_only=True)


def _dashboard_names() -> dict[str, set[str]]:
    return {q: promql_metric_names(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))}


def test_promql_name_extraction() -> None:
    q = (
        'histogram_quantile(0.99, sum by (le) (rate(dangerclip_x_bucket{job=~"$job", le!="1"}[$__rate_interval])))'
        ' / clamp_min(sum(up{a="b"}), 1e-9) > bool 0.5 unless on(topic) foo:bar offset 5m'
    )
    assert promql_metric_names(q) == {"dangerclip_x_bucket", "up", "foo:bar"}
    assert promql_metric_names('label_values(dangerclip_build_info{job=~"$job"}, instance)') == {
        "dangerclip_build_info"
    }


def test_dashboard_uses_only_exported_metrics(scraped_names: set[str]) -> None:
    used = set().union(*_dashboard_names().values())
    assert used, "no metric found in the dashboard"
    unknown = used - scraped_names - PROMETHEUS_SYNTHETIC
    assert not unknown, f"the dashboard queries metrics the worker does not export: {sorted(unknown)}"


@pytest.mark.parametrize(
    "values_file",
    [None, CHART / "ci" / "hpa-monitoring-values.yaml"],
    ids=["compose-alerts", "chart-alerts+additional"],
)
def test_alert_rules_use_only_exported_metrics(values_file: Path | None, scraped_names: set[str]) -> None:
    if values_file is None:
        exprs = rule_exprs(yaml.safe_load(ALERTS.read_text()))
    else:
        exprs = rule_exprs(one(render(load_values(values_file)), "PrometheusRule")["spec"])
    used = set().union(*(promql_metric_names(e) for e in exprs))
    unknown = used - scraped_names - PROMETHEUS_SYNTHETIC
    assert not unknown, f"alert rules query metrics the worker does not export: {sorted(unknown)}"


def test_a_misspelt_metric_would_be_caught(scraped_names: set[str]) -> None:
    assert "dangerclip_records_consumed_total" in scraped_names
    assert "dangerclip_records_consume_total" not in scraped_names
    assert promql_metric_names("rate(dangerclip_records_consume_total[5m])") - scraped_names


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule), so a typo cannot reach Grafana."""
    queries = [q for q in dashboard_queries(json.loads(DASHBOARD.read_text())) if not q.startswith("label_values")]
    assert len(queries) > 25
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(q)} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    f = tmp_path / "dashboard-queries.yaml"
    f.write_text(yaml.safe_dump(rules))
    out = _promtool(promtool, "check", "rules", str(f))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(queries)} rules found" in out.stdout


def test_dashboard_shows_what_the_issue_lists() -> None:
    dash = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dash["panels"]}
    names = {
        t: set().union(*(promql_metric_names(x["expr"]) for x in p.get("targets", [])), set())
        for t, p in by_title.items()
    }
    wanted = {
        "Throughput in and out": {"dangerclip_records_consumed_total", "dangerclip_results_produced_total"},
        "Dead-letter rate by reason": {"dangerclip_dead_letters_total"},
        "Lag per partition": {"dangerclip_consumer_lag_records"},
        "Batch size": {"dangerclip_batch_size_records_bucket"},
        "Decode and inference latency": {
            "dangerclip_decode_duration_seconds_bucket",
            "dangerclip_inference_duration_seconds_bucket",
        },
        "End-to-end latency": {"dangerclip_end_to_end_duration_seconds_bucket"},
        "Score distribution over time": {"dangerclip_score_bucket"},
        "Model version and execution provider per worker": {"dangerclip_model_info"},
    }
    for title, metrics in wanted.items():
        assert title in by_title, title
        assert metrics <= names[title], (title, names[title])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    assert "by (reason)" in exprs and "by (topic, partition)" in exprs
    model_panel = by_title["Model version and execution provider per worker"]
    assert "provider" in model_panel["targets"][0]["expr"] and "version" in model_panel["targets"][0]["expr"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance", "category"} <= variables


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dangerclip.yaml").read_text())
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1)[::-1]
        for v in compose["services"]["grafana"]["volumes"]
        if v.startswith("../")
    )
    assert mounts[prov["providers"][0]["options"]["path"]] == "../grafana/dashboards"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert ds["datasources"][0]["type"] == "prometheus"
