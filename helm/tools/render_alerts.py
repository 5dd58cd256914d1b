#!/usr/bin/env python3
"""Write ``deploy/prometheus/alerts.yaml`` (the compose stack's rules) from the chart's PrometheusRule.

One source for the alert rules: ``helm/dangerclip/templates/_alerts.tpl``. This renders the chart with its
default thresholds and release name ``dangerclip`` (so ``job="dangerclip"``, the compose Prometheus job) and
writes the PrometheusRule's ``spec`` as a plain Prometheus rules file, which promtool checks and unit-tests.

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
RELEASE = "dangerclip"


def rule_spec(values: dict[str, Any] | None = None, release: str = RELEASE) -> dict[str, Any]:
    """The rendered PrometheusRule ``spec`` (``{"groups": [...]}``) for ``values`` on top of the defaults."""
    import helm_python as helm

    vals: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True}}}
    for k, v in (values or {}).items():
        vals[k] = v if k != "metrics" else {**v, "prometheusRule": {**v.get("prometheusRule", {}), "enabled": True}}
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(vals, name=release, namespace="default")
    doc = yaml.safe_load(out["dangerclip/templates/prometheusrule.yaml"])
    return doc["spec"]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    # Multi-line PromQL stays readable as a literal block.
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def render() -> str:
    head = (
        "# DangerCLIP alert rules for Prometheus (the compose stack loads this file).\n"
        "# GENERATED from helm/dangerclip/templates/_alerts.tpl by helm/tools/render_alerts.py with the chart's\n"
        "# default thresholds: edit the template, then rerun the script. Unit tests: alerts.test.yaml.\n"
    )
    return head + yaml.dump(rule_spec(), Dumper=_Dumper, sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    return write_or_check(OUT, render(), args.check, "helm/tools/render_alerts.py")


if __name__ == "__main__":
    sys.exit(main())
