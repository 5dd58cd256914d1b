"""Alert rules (promtool) and the Grafana dashboard, against what the worker really exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import (
    CHART,
    DEPLOY,
    REPO,
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
ALERTS_GPU = DEPLOY / "prometheus" / "alerts-gpu.yaml"
RULE_FILES = (ALERTS, ALERTS_GPU)
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dangerclip.json"
# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# kube-state-metrics (part of kube-prometheus-stack): only a release that may scale to zero asks it.
KUBE_STATE_METRICS = {"kube_deployment_spec_replicas"}


def _all_rules() -> dict[str, dict]:
    return {r["alert"]: r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]}


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent)


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    for f in RULE_FILES:
        out = _promtool(promtool, "check", "rules", str(f))
        assert out.returncode == 0, out.stdout + out.stderr
        count = sum(len(g["rules"]) for g in yaml.safe_load(f.read_text())["groups"])
        assert f"SUCCESS: {count} rules found" in out.stdout


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    out = _promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_the_issue_asks_for_exists_and_is_unit_tested() -> None:
    """Each alert has a promtool case that makes it fire and one that keeps it quiet, including every stall
    the issue lists: partitions unowned, polls failing, no scrape targets, no commits while lag waits, a
    caught-up worker that stalls, a GPU worker on the CPU."""
    rules = _all_rules()
    wanted = {
        "DangerCLIPConsumerLagGrowing",
        "DangerCLIPDeadLetterRateHigh",
        "DangerCLIPNoResults",
        "DangerCLIPWorkerDown",
        "DangerCLIPInferenceP99High",
        "DangerCLIPOffsetCommitsFailing",
        "DangerCLIPNoScrapeTargets",
        "DangerCLIPPartitionsUnassigned",
        "DangerCLIPNotPolling",
        "DangerCLIPPartitionStalled",
        "DangerCLIPCircuitOpen",
        "DangerCLIPScoringOnCPU",
    }
    assert wanted <= set(rules)
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert set(tests["rule_files"]) == {f.name for f in RULE_FILES}
    cases = [t for case in tests["tests"] for t in case["alert_rule_test"]]
    fires = {t["alertname"] for t in cases if t.get("exp_alerts")}
    quiet = {t["alertname"] for t in cases if not t.get("exp_alerts")}
    assert set(rules) <= fires, f"alerts with no firing unit test: {set(rules) - fires}"
    assert set(rules) <= quiet, f"alerts with no quiet unit test: {set(rules) - quiet}"
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
    # ... and namespace="dangerclip": the label the chart's pods have, which compose's targets lack.
    sys.path.insert(0, str(REPO / "helm" / "tools"))
    import render_alerts

    (ns,) = [r["replacement"] for r in job["relabel_configs"] if r["target_label"] == "namespace"]
    assert ns == render_alerts.NAMESPACE
    for rule in _all_rules().values():
        assert f'namespace="{ns}"' in rule["expr"], rule["alert"]


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
    ids=["compose-alerts", "chart-alerts+additional+gpu+scale-to-zero"],
)
def test_alert_rules_use_only_exported_metrics(values_file: Path | None, scraped_names: set[str]) -> None:
    if values_file is None:
        exprs = [r["expr"] for r in _all_rules().values()]
    else:
        values = load_values(values_file) | {"gpu": {"enabled": True}, "replicaCount": 0}
        exprs = rule_exprs(one(render(values), "PrometheusRule")["spec"])
    used = set().union(*(promql_metric_names(e) for e in exprs))
    unknown = used - scraped_names - PROMETHEUS_SYNTHETIC - KUBE_STATE_METRICS
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
    assert {"datasource", "namespace", "job", "instance", "category"} <= variables
    for q in dashboard_queries(dash):
        if "dangerclip_" in q and not q.startswith("label_values(dangerclip_build_info, namespace)"):
            assert 'namespace=~"$namespace"' in q, q


def test_model_change_annotation_fires_on_a_new_version_only(promtool: str, tmp_path: Path) -> None:
    """The dashboard's "Model changes" annotation, run by promtool over a rollout: two workers on version 1,
    then one by one on version 2. It marks the minutes after version 2 appears, and nothing while versions
    hold steady (dangerclip_model_info is always 1, so the old changes() query never marked anything)."""
    (annotation,) = [
        a for a in json.loads(DASHBOARD.read_text())["annotations"]["list"] if a["name"] == "Model changes"
    ]
    expr = grafana_to_promql(annotation["expr"])
    info = (
        'dangerclip_model_info{{job="dangerclip", namespace="dangerclip", instance="{i}", version="{v}", sha256="{h}"}}'
    )
    series = [
        {"series": info.format(i="a", v="1", h="aa"), "values": "1x9 _x11"},
        {"series": info.format(i="b", v="1", h="aa"), "values": "1x11 _x9"},
        {"series": info.format(i="a", v="2", h="bb"), "values": "_x9 1x11"},
        {"series": info.format(i="b", v="2", h="bb"), "values": "_x11 1x9"},
    ]

    def new_version(workers: int) -> list[dict]:  # the value: how many workers serve it
        return [{"labels": '{sha256="bb", version="2"}', "value": workers}]

    cases = [
        {"expr": expr, "eval_time": "5m", "exp_samples": []},
        {"expr": expr, "eval_time": "10m", "exp_samples": new_version(1)},
        {"expr": expr, "eval_time": "13m", "exp_samples": new_version(2)},
        {"expr": expr, "eval_time": "18m", "exp_samples": []},
    ]
    test = {
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
    }
    f = tmp_path / "annotation.test.yaml"
    f.write_text(yaml.safe_dump(test))
    out = _promtool(promtool, "test", "rules", str(f))
    assert out.returncode == 0, out.stdout + out.stderr


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


# ---------------------------------------------------------------------------- runbooks
def _runbooks() -> dict[str, str]:
    text = (DEPLOY / "README.md").read_text()
    part = text[text.index("## 11. Runbooks") :]
    sections = re.split(r"^### ", part, flags=re.M)[1:]
    return {s.split("\n", 1)[0].strip(): s for s in sections}


def test_every_alert_links_to_a_runbook_that_says_how_to_confirm_and_what_to_do() -> None:
    from service.doctor import Doctor

    rules = [r for f in ("alerts.yaml", "alerts-gpu.yaml") for g in _load_rules(f)["groups"] for r in g["rules"]]
    books = _runbooks()
    panels = set(_dashboard_titles())
    doctor_lines = {
        "settings",
        "model",
        "providers",
        "inference",
        "metrics port",
        "worker",
        "brokers",
        "topic",
        "result order",
        "consumer group",
        "acls",
    }
    src = Path(sys.modules[Doctor.__module__].__file__).read_text()
    assert all(f'"{name}' in src for name in doctor_lines), "a doctor line the runbooks cite no longer exists"
    for rule in rules:
        name = rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("README.md#" + name.lower()), url  # GitHub's anchor for "### <name>"
        book = books[name]
        assert "**Means**" in book and "**Confirm**" in book and "**Do**" in book, name
        cited = {" ".join(c.split()) for c in re.findall(r"\*([A-Z][^*]+)\*", book)} - {
            "Means",
            "Confirm",
            "Do",
            "Targets",
        }
        assert cited and cited <= panels, (name, cited - panels)
        lines = set(re.findall(r"doctor's `([a-z ]+)(?: <[a-z-]+>)?`", book)) | set(
            re.findall(r"`(model|providers|inference)`", book)
        )
        assert lines and lines <= doctor_lines, (name, lines)
    assert set(books) == {r["alert"] for r in rules}, "a runbook without an alert, or the reverse"


def _load_rules(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / name).read_text())


def _dashboard_titles() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "dashboards" / "dangerclip.json").read_text())

    def walk(ps: list) -> list[str]:
        return [t for p in ps for t in [p.get("title", "")] + walk(p.get("panels", []))]

    return walk(doc["panels"])
