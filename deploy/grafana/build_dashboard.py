#!/usr/bin/env python3
"""Build the DangerCLIP Grafana dashboard JSON from one readable list of panels, with Grafana's typed SDK
(``grafana-foundation-sdk``: builders for each panel kind, the Prometheus query, variables and annotations,
so a misspelt option is an ``AttributeError`` here rather than a panel Grafana silently ignores).

The dashboard is written twice, byte for byte the same: ``deploy/grafana/dashboards/dangerclip.json``
(provisioned by the compose stack) and ``helm/dangerclip/files/dashboards/dangerclip.json`` (shipped by the
chart as a ConfigMap for Grafana's dashboard sidecar). The tests check both are up to date and that every
metric a query names is one the worker really exports.

    .venv/bin/python deploy/grafana/build_dashboard.py            # rewrite both files
    .venv/bin/python deploy/grafana/build_dashboard.py --check    # exit 1 when either is stale

Every query is scoped by the ``$namespace``, ``$job`` and ``$instance`` variables, so one Grafana serves several
releases (the chart's ServiceMonitor sets ``job`` to the release's full name and Prometheus adds the pods'
``namespace``; compose's Prometheus job is ``dangerclip`` and it labels targets ``namespace="dangerclip"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    GridPos,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    ROOT / "deploy" / "grafana" / "dashboards" / "dangerclip.json",
    ROOT / "helm" / "dangerclip" / "files" / "dashboards" / "dangerclip.json",
)
UID = "dangerclip-workers"
MODEL_CHANGES = (
    'count by (version, sha256) (dangerclip_model_info{namespace=~"$namespace", job=~"$job"}) unless '
    'count by (version, sha256) (dangerclip_model_info{namespace=~"$namespace", job=~"$job"} offset 5m)'
)
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
FORMATS = {"table": PromQueryFormat.TABLE, "heatmap": PromQueryFormat.HEATMAP}
KINDS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel, "heatmap": heatmap.Panel}


def target(expr: str, legend: str = "", format: str = "", instant: bool = False) -> prometheus.Dataquery:
    """A Prometheus query (the ref id is set by the panel, in order)."""
    q = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DS)
    if format:
        q = q.format(FORMATS[format])
    if instant:
        q = q.instant()
    return q


def panel(
    title: str,
    targets: list[prometheus.Dataquery],
    grid: tuple[int, int, int, int],
    kind: str = "timeseries",
    unit: str = "short",
    description: str = "",
    transformations: list[DataTransformerConfig] | None = None,
) -> Any:
    """A panel of ``kind`` at ``grid = (x, y, w, h)`` with its queries lettered A, B, ... in order."""
    x, y, w, h = grid
    b = KINDS[kind]().title(title).description(description).datasource(DS).unit(unit)
    b = b.grid_pos(GridPos(x=x, y=y, w=w, h=h))
    b = b.targets([q.ref_id(chr(ord("A") + i)) for i, q in enumerate(targets)])
    if kind == "heatmap":
        b = (
            b.calculate(False)
            .y_axis(heatmap.YAxisConfig().unit("short"))
            .color(
                heatmap.HeatmapColorOptions()
                .scheme("Oranges")
                .mode(HeatmapColorMode.SCHEME)
                .scale(HeatmapColorScale.EXPONENTIAL)
                .exponent(0.5)
                .steps(64)
            )
            .show_tooltip()
        )
    if transformations:
        b = b.transformations(transformations)
    return b


def row(title: str, y: int) -> Any:
    return dashboard_builder.Row(title).grid_pos(GridPos(x=0, y=y, w=24, h=1)).collapsed(False)


def quantiles(metric: str, legend: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[prometheus.Dataquery]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
            f"{legend} p{int(q * 100)}",
        )
        for q in qs
    ]


def panels() -> list[Any]:
    rate = "[$__rate_interval]"
    p: list[Any] = [row("Overview", 0)]
    p += [
        panel(
            "Workers up",
            [target(f"sum(up{{{SEL}}})", "up")],
            (0, 1, 4, 4),
            "stat",
            description="Scrape targets answering (Prometheus' own `up`).",
        ),
        panel(
            "Ready workers",
            [target(f"sum(dangerclip_ready{{{SEL}}})", "ready")],
            (4, 1, 4, 4),
            "stat",
            description="Model loaded and partitions assigned.",
        ),
        panel(
            "Images in /s",
            [target(f"sum(rate(dangerclip_records_consumed_total{{{SEL}}}{rate}))", "in")],
            (8, 1, 4, 4),
            "stat",
            "reqps",
        ),
        panel(
            "Results out /s",
            [target(f"sum(rate(dangerclip_results_produced_total{{{SEL}}}{rate}))", "out")],
            (12, 1, 4, 4),
            "stat",
            "reqps",
        ),
        panel(
            "Dead letters",
            [
                target(
                    f"sum(rate(dangerclip_dead_letters_total{{{SEL}}}{rate})) / "
                    f"clamp_min(sum(rate(dangerclip_records_consumed_total{{{SEL}}}{rate})), 1e-9)",
                    "dead-letter share",
                )
            ],
            (16, 1, 4, 4),
            "stat",
            "percentunit",
            "Share of consumed records sent to the dead-letter topic.",
        ),
        panel(
            "Consumer lag",
            [target(f"sum(dangerclip_consumer_lag_records{{{SEL}}})", "lag")],
            (20, 1, 4, 4),
            "stat",
            "short",
            "Records behind the high watermark, all partitions.",
        ),
    ]
    p.append(row("Throughput", 5))
    p += [
        panel(
            "Throughput in and out",
            [
                target(f"sum(rate(dangerclip_records_consumed_total{{{SEL}}}{rate}))", "consumed"),
                target(f"sum(rate(dangerclip_results_produced_total{{{SEL}}}{rate}))", "results"),
                target(f"sum(rate(dangerclip_dead_letters_total{{{SEL}}}{rate}))", "dead letters"),
            ],
            (0, 6, 12, 8),
            unit="reqps",
            description="Records per second taken from Kafka and written back.",
        ),
        panel(
            "Dead-letter rate by reason",
            [
                target(f"sum by (reason) (rate(dangerclip_dead_letters_total{{{SEL}}}{rate}))", "{{reason}}"),
            ],
            (12, 6, 12, 8),
            unit="reqps",
        ),
        panel(
            "Throughput per worker",
            [
                target(f"sum by (instance) (rate(dangerclip_results_produced_total{{{SEL}}}{rate}))", "{{instance}}"),
            ],
            (0, 14, 12, 8),
            unit="reqps",
        ),
        panel(
            "Flagged per category",
            [
                target(f"sum by (category) (rate(dangerclip_flagged_total{{{SEL}}}{rate}))", "{{category}}"),
            ],
            (12, 14, 12, 8),
            unit="reqps",
            description="Results over the category's threshold, per second.",
        ),
    ]
    p.append(row("Kafka", 22))
    p += [
        panel(
            "Lag per partition",
            [
                target(
                    f"max by (topic, partition) (dangerclip_consumer_lag_records{{{SEL}}})", "{{topic}}/{{partition}}"
                ),
            ],
            (0, 23, 12, 8),
            unit="short",
            description="Fetch high watermark minus position, as the owning worker sees it.",
        ),
        panel(
            "Partitions per worker",
            [
                target(f"sum by (instance) (dangerclip_assigned_partitions{{{SEL}}})", "{{instance}}"),
            ],
            (12, 23, 6, 8),
            unit="short",
        ),
        panel(
            "Rebalances, commits and broker errors",
            [
                target(f"sum by (event) (increase(dangerclip_rebalances_total{{{SEL}}}{rate}))", "rebalance {{event}}"),
                target(
                    f"sum by (outcome) (rate(dangerclip_offset_commits_total{{{SEL}}}{rate}))", "commit {{outcome}}"
                ),
                target(
                    f"sum by (operation) (rate(dangerclip_broker_errors_total{{{SEL}}}{rate}))", "error {{operation}}"
                ),
                target(
                    f"sum by (reason) (rate(dangerclip_records_abandoned_total{{{SEL}}}{rate}))", "abandoned {{reason}}"
                ),
            ],
            (18, 23, 6, 8),
            unit="short",
        ),
    ]
    p.append(row("Stalls", 31))
    p += [
        panel(
            "Partitions owned vs topic",
            [
                target(f"max by (topic) (dangerclip_topic_partitions{{{SEL}}})", "{{topic}} partitions"),
                target(f"sum(dangerclip_assigned_partitions{{{SEL}}})", "owned by the workers"),
            ],
            (0, 32, 6, 8),
            unit="short",
            description="Fewer owned than the topic has: some partitions are read by no one "
            "(DangerCLIPPartitionsUnassigned).",
        ),
        panel(
            "Since last poll and last commit",
            [
                target(
                    f"max by (instance) (time() - dangerclip_last_poll_timestamp_seconds{{{SEL}}})", "poll {{instance}}"
                ),
                target(
                    f"max by (topic, partition) (time() - dangerclip_last_commit_timestamp_seconds{{{SEL}}})"
                    " and on(topic, partition) "
                    f"max by (topic, partition) (dangerclip_consumer_lag_records{{{SEL}}}) > 0",
                    "commit {{topic}}/{{partition}} (records waiting)",
                ),
            ],
            (6, 32, 6, 8),
            unit="s",
            description="Seconds since each worker's last successful poll, and since the last commit of each "
            "partition that has records waiting (DangerCLIPNotPolling, DangerCLIPPartitionStalled).",
        ),
        panel(
            "Records held",
            [
                target(f"sum(dangerclip_records_pending{{{SEL}}})", "pending (polled, not in a batch)"),
                target(f"sum(dangerclip_records_in_flight{{{SEL}}})", "in flight (batch being scored)"),
            ],
            (12, 32, 6, 8),
            unit="short",
        ),
        panel(
            "Buffered bytes and circuit breaker",
            [
                target(f"max by (instance) (dangerclip_buffered_bytes{{{SEL}}})", "buffered {{instance}}"),
                target(f"max by (instance) (dangerclip_circuit_open{{{SEL}}})", "circuit open {{instance}}"),
            ],
            (18, 32, 6, 8),
            unit="bytes",
            description="Input bytes each worker holds (capped by max_buffered_bytes), and 1 while its model "
            "circuit breaker has stopped consumption (DangerCLIPCircuitOpen).",
        ),
    ]
    p.append(row("Latency and batching", 40))
    p += [
        panel(
            "Batch size",
            [
                *quantiles("dangerclip_batch_size_records", "batch"),
                target(
                    f"sum(rate(dangerclip_batch_size_records_sum{{{SEL}}}{rate})) / "
                    f"sum(rate(dangerclip_batch_size_records_count{{{SEL}}}{rate}))",
                    "mean",
                ),
            ],
            (0, 41, 8, 8),
            unit="short",
            description="Records per scored micro-batch.",
        ),
        panel(
            "Decode and inference latency",
            [
                *quantiles("dangerclip_decode_duration_seconds", "decode (per image)"),
                *quantiles("dangerclip_inference_duration_seconds", "inference (per batch)"),
                *quantiles("dangerclip_produce_duration_seconds", "produce+flush (per batch)"),
            ],
            (8, 41, 8, 8),
            unit="s",
        ),
        panel(
            "End-to-end latency",
            [
                *quantiles("dangerclip_end_to_end_duration_seconds", "end to end"),
                *quantiles("dangerclip_queue_duration_seconds", "queue"),
            ],
            (16, 41, 8, 8),
            unit="s",
            description="From the record's Kafka timestamp to its result flushed (end to end) or taken "
            "by a worker (queue).",
        ),
    ]
    p.append(row("Model", 49))
    p += [
        panel(
            "Score distribution over time",
            [
                target(
                    f'sum by (le) (increase(dangerclip_score_bucket{{{SEL}, category=~"$category"}}{rate}))',
                    "{{le}}",
                    format="heatmap",
                ),
            ],
            (0, 50, 12, 9),
            "heatmap",
            "short",
            "Scores of category $category; a moving distribution is drift (or a changed input mix).",
        ),
        panel(
            "Mean score per category",
            [
                target(
                    f"sum by (category) (rate(dangerclip_score_sum{{{SEL}}}{rate})) / "
                    f"sum by (category) (rate(dangerclip_score_count{{{SEL}}}{rate}))",
                    "{{category}}",
                ),
            ],
            (12, 50, 12, 9),
            unit="percentunit",
        ),
        panel(
            "Model version and execution provider per worker",
            [
                target(
                    f"max by (instance, pod, name, version, provider, mode, trained, sha256) "
                    f"(dangerclip_model_info{{{SEL}}})",
                    "",
                    format="table",
                    instant=True,
                ),
                target(
                    f"max by (instance, version) (dangerclip_build_info{{{SEL}}})", "", format="table", instant=True
                ),
            ],
            (0, 59, 24, 7),
            "table",
            description="What each worker serves. Two versions side by side mean a rollout is in progress.",
            transformations=[
                DataTransformerConfig(id_val="merge", options={}),
                DataTransformerConfig(
                    id_val="organize",
                    options={"excludeByName": {"Time": True, "Value": True, "Value #A": True, "Value #B": True}},
                ),
            ],
        ),
    ]
    return p


def variable(name: str, query: str, label: str, multi: bool = True) -> Any:
    v = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .include_all(multi)
        .multi(multi)
    )
    if multi:
        v = v.all_value(".*").current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    return v


def dashboard() -> dict[str, Any]:
    b = (
        dashboard_builder.Dashboard("DangerCLIP workers")
        .uid(UID)
        .description("Kafka scoring workers: throughput, dead letters, lag, latency, scores, model per pod.")
        .tags(["dangerclip", "kafka"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard_builder.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(variable("namespace", "label_values(dangerclip_build_info, namespace)", "Namespace"))
        .with_variable(variable("job", 'label_values(dangerclip_build_info{namespace=~"$namespace"}, job)', "Job"))
        .with_variable(
            variable(
                "instance",
                'label_values(dangerclip_build_info{namespace=~"$namespace", job=~"$job"}, instance)',
                "Worker",
            )
        )
        .with_variable(
            variable(
                "category",
                'label_values(dangerclip_score_bucket{namespace=~"$namespace", job=~"$job"}, category)',
                "Category",
                multi=False,
            )
        )
        # dangerclip_model_info is always 1, so changes() of it never fired: a version (or file) is new when it is
        # served now and was not five minutes ago.
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("Model changes")
            .datasource(DS)
            .enable(True)
            .icon_color("orange")
            .expr(MODEL_CHANGES)
        )
    )
    for i, p in enumerate(panels(), start=1):
        p = p.id(i)
        b = b.with_row(p) if isinstance(p, dashboard_builder.Row) else b.with_panel(p)
    doc = _drop_nulls(json.loads(JSONEncoder(sort_keys=False, indent=2).encode(b.build())))
    # The Model changes annotation's legend: a field the typed AnnotationQuery does not model (Grafana reads it).
    doc["annotations"]["list"][-1]["titleFormat"] = "model {{version}} ({{sha256}})"
    return doc


def _drop_nulls(node: Any) -> Any:
    """Options the SDK leaves unset are written as ``null``; Grafana applies a panel's defaults only to absent keys."""
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a written file is stale")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUTS if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            sys.stderr.write(f"{p} is stale; rerun {Path(__file__).name}\n")
        return 1 if stale else 0
    for p in OUTPUTS:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        sys.stdout.write(f"wrote {p}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
