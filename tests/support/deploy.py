"""What the deployment tests share: chart rendering with real Helm, PromQL metric names, a real scrape.

Helm is the Helm v4 Go SDK (``helm-python-sdk``), so lint, schema validation and rendering are Helm's own,
not a re-implementation. promtool comes from Debian's ``prometheus`` package (``scripts/setup-system.sh``).
"""

from __future__ import annotations

import math
import re
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "dangerclip"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "dangerclip"
NAMESPACE = "moderation"


# ---------------------------------------------------------------------------- settings
def settings_env_names() -> set[str]:
    """Every environment variable the worker's pydantic Settings reads."""
    from service.settings import ENV_PREFIX, Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


# ---------------------------------------------------------------------------- helm
def helm():
    return pytest.importorskip("helm_python", reason="helm-python-sdk (the dev extra) is not installed")


def load_values(path: Path | None) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path is not None else None


@cache
def _render_cached(values_yaml: str, release: str, kube_version: str | None) -> tuple[tuple[str, str], ...]:
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        if kube_version is None:
            out = chart.render(yaml.safe_load(values_yaml) or None, name=release, namespace=NAMESPACE)
        else:
            # `helm template --kube-version`: the SDK's render takes it natively, its Python wrapper not yet.
            import json

            from helm_python import _native

            opts = {"name": release, "namespace": NAMESPACE, "kube_version": kube_version}
            values_json = json.dumps(yaml.safe_load(values_yaml) or None)
            out = json.loads(_native.call_string("helm_render", chart._raw(), values_json, json.dumps(opts)))
    return tuple(sorted(out.items()))


def render(
    values: dict[str, Any] | None = None, release: str = RELEASE, kube_version: str | None = None
) -> list[dict[str, Any]]:
    """Render the chart (``helm template [--kube-version]``) and return every Kubernetes object, NOTES excluded."""
    docs: list[dict[str, Any]] = []
    for path, text in _render_cached(yaml.safe_dump(values or {}, sort_keys=True), release, kube_version):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                docs.append(doc)
    return docs


def merged_values(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's defaults coalesced with ``values``, as an install would use them."""
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "worker"]
    return c


POD_NAME = "dangerclip-5d8f7c9b4-x2x7q"


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"2"``, ``"1500m"``) in cores."""
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def downward_value(container: dict[str, Any], source: dict[str, Any], pod_name: str = POD_NAME) -> str:
    """What the kubelet puts in an env var ``valueFrom`` a ``fieldRef`` (the pod's name) or a ``resourceFieldRef``
    (a CPU request divided by its divisor, rounded up, as the kubelet does)."""
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name", source
        return pod_name
    ref = source["resourceFieldRef"]
    assert ref["containerName"] == container["name"], "the worker's own resources"
    kind, _, resource = ref["resource"].partition(".")
    assert resource == "cpu", ref
    value = container["resources"][kind]["cpu"]
    return str(math.ceil(cpu_cores(value) / cpu_cores(ref.get("divisor", "1"))))


def worker_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every variable the worker container gets: the ConfigMap (envFrom) and its own ``env``, as the kubelet
    resolves them (``env`` wins over ``envFrom``; downward-API values filled in).

    Values are strings; variables from a Secret map to ``{"secretKeyRef": ...}``.
    """
    c = worker_container(docs)
    env: dict[str, Any] = {}
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for src in c.get("envFrom", []):
        env.update(cms[src["configMapRef"]["name"]]["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = e["valueFrom"]
        else:
            env[e["name"]] = downward_value(c, e["valueFrom"])
    return env


# ---------------------------------------------------------------------------- promtool
# ---------------------------------------------------------------------------- PromQL
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana ``label_values(...)`` query) selects.

    Strips strings, label matchers, ranges, grouping clauses and numbers; what is left that is not a
    function call or a keyword is a metric name.
    """
    m = re.match(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)", expr)
    if m:
        return {m.group(1)}
    if expr.strip().startswith("label_values("):
        return set()
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)  # offset 5m
    s = re.sub(r"@\s*(?:[\d.]+|start\(\)|end\(\))", " ", s)  # @ modifiers
    s = _NUMBER.sub(" ", s)
    names = set()
    for tok in _IDENT.finditer(s):
        word = tok.group(0)
        rest = s[tok.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL expression in a Grafana dashboard: panel targets, annotations, template variables."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            elif k == "definition" and isinstance(v, str):
                yield v
            else:
                yield from dashboard_queries(v)
    elif isinstance(node, list):
        for v in node:
            yield from dashboard_queries(v)


def rule_exprs(spec: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in spec["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------- /metrics
def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def exported_names(text: str, samples_only: bool = False) -> set[str]:
    """Series names a ``/metrics`` text exposes: sample names, plus (unless ``samples_only``) the names a
    family declared by ``# TYPE`` will have once it gets samples (``_total``, ``_bucket``/``_sum``/``_count``)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {s.name for s in fam.samples}
        if samples_only:
            continue
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    return names


# Grafana's variables, as a dashboard on one worker's data would fill them in.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$namespace": "dangerclip",
    "$job": "dangerclip",
    "$instance": ".*",
    "$category": ".*",
}


def grafana_to_promql(expr: str, variables: dict[str, str] | None = None) -> str:
    """A dashboard query with Grafana's ``$variables`` replaced, so Prometheus can parse and run it."""
    for name, value in sorted((variables or GRAFANA_VARS).items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr
