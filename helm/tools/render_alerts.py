#!/usr/bin/env python3
"""Write ``deploy/prometheus/alerts.yaml`` and ``alerts-gpu.yaml`` (the compose stack's rules) from the chart.

One source for the alert rules: ``helm/dangerclip/templates/_alerts.tpl``. This renders the chart's
PrometheusRule with its default thresholds, release name ``dangerclip`` and namespace ``dangerclip`` (so
``job="dangerclip", namespace="dangerclip"``: the compose Prometheus job, and the namespace label its
``prometheus.yml`` gives every target) and writes the ``spec`` as plain Prometheus rules files, which
promtool checks and unit-tests: ``alerts.yaml`` the workers' group, ``alerts-gpu.yaml`` the group a
``gpu.enabled`` release adds (``compose.gpu.yaml`` loads it).

    .venv/bin/python helm/tools/render_alerts.py            # rewrite
    .venv/bin/python helm/tools/render_alerts.py --check    # exit 1 when stale (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from _generated import write_or_check

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dangerclip"
OUT = ROOT / "deploy" / "prometheus" / "alerts.yaml"
OUT_GPU = ROOT / "deploy" / "prometheus" / "alerts-gpu.yaml"
RELEASE = "dangerclip"
NAMESPACE = "dangerclip"


def rule_spec(
    values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, Any]:
    """The rendered PrometheusRule ``spec`` (``{"groups": [...]}``) for ``values`` on top of the defaults."""
    import helm_python as helm

    vals: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True}}}
    for k, v in (values or {}).items():
        vals[k] = v if k != "metrics" else {**v, "prometheusRule": {**v.get("prometheusRule", {}), "enabled": True}}
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(vals, name=release, namespace=namespace)
    doc = yaml.safe_load(out["dangerclip/templates/prometheusrule.yaml"])
    return doc["spec"]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    # Multi-line PromQL stays readable as a literal block.
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


HEAD = (
    "# DangerCLIP alert rules for Prometheus ({what}).\n"
    "# GENERATED from helm/dangerclip/templates/_alerts.tpl by helm/tools/render_alerts.py with the chart's\n"
    "# default thresholds: edit the template, then rerun the script. Unit tests: alerts.test.yaml.\n"
)


def render() -> str:
    """The workers' rules, as every release has them."""
    spec = rule_spec()
    return HEAD.format(what="the compose stack loads this file") + yaml.dump(
        spec, Dumper=_Dumper, sort_keys=False, width=110
    )


def render_gpu() -> str:
    """Only the group ``gpu.enabled`` adds (the workers' group is in alerts.yaml already)."""
    groups = [g for g in rule_spec({"gpu": {"enabled": True}})["groups"] if g["name"].endswith(".gpu.rules")]
    return HEAD.format(what="GPU workers: compose.gpu.yaml loads this file") + yaml.dump(
        {"groups": groups}, Dumper=_Dumper, sort_keys=False, width=110
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    tool = "helm/tools/render_alerts.py"
    return write_or_check(OUT, render(), args.check, tool) | write_or_check(OUT_GPU, render_gpu(), args.check, tool)


if __name__ == "__main__":
    sys.exit(main())
