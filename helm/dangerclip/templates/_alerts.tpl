{{/*
The DangerCLIP alert rules, one group. Rendered into the PrometheusRule and, with the default values and
release name "dangerclip", written to deploy/prometheus/alerts.yaml for the compose stack
(helm/tools/render_alerts.py); promtool checks and unit-tests both.
*/}}
{{- define "dangerclip.alertGroups" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- $job := include "dangerclip.fullname" . -}}
{{- $sel := printf "job=%q" $job -}}
{{- $sev := $r.severityLabel -}}
groups:
  - name: {{ $job }}.rules
    rules:
      - alert: DangerCLIPConsumerLagGrowing
        # Lag above the floor that is still rising over the whole window: workers fall behind the input.
        expr: |-
          sum by (topic) (dangerclip_consumer_lag_records{ {{- $sel -}} }) > {{ $r.consumerLagMin }}
          and
          deriv(sum by (topic) (dangerclip_consumer_lag_records{ {{- $sel -}} })[{{ $r.consumerLagFor }}:1m]) > 0
        for: {{ $r.consumerLagFor }}
        labels:
          {{ $sev }}: warning
        annotations:
          summary: DangerCLIP consumer lag on {{ "{{ $labels.topic }}" }} keeps growing
          description: >-
            {{ "{{ $value | humanize }}" }} records behind and rising for {{ $r.consumerLagFor }} on topic
            {{ "{{ $labels.topic }}" }}. Add workers (up to the partition count), check the inference
            latency panel, or add partitions.
      - alert: DangerCLIPDeadLetterRateHigh
        expr: |-
          sum(rate(dangerclip_dead_letters_total{ {{- $sel -}} }[5m]))
            / sum(rate(dangerclip_records_consumed_total{ {{- $sel -}} }[5m]))
          > {{ $r.deadLetterRatio }}
        for: {{ $r.deadLetterFor }}
        labels:
          {{ $sev }}: warning
        annotations:
          summary: DangerCLIP dead-letters more than {{ $r.deadLetterRatio }} of its input
          description: >-
            {{ "{{ $value | humanizePercentage }}" }} of consumed records went to the dead-letter topic over
            the last 5 minutes. The dashboard's "Dead-letter rate by reason" panel says why.
      - alert: DangerCLIPNoResults
        # Input arrives (records consumed, or lag waiting) but no result is produced.
        expr: |-
          (
            sum(rate(dangerclip_records_consumed_total{ {{- $sel -}} }[5m])) > 0
            or
            sum(dangerclip_consumer_lag_records{ {{- $sel -}} }) > 0
          )
          unless
          sum(rate(dangerclip_results_produced_total{ {{- $sel -}} }[5m])) > 0
        for: {{ $r.noResultsFor }}
        labels:
          {{ $sev }}: critical
        annotations:
          summary: DangerCLIP produces no results while input arrives
          description: >-
            Records are waiting or being consumed, but no result was written for {{ $r.noResultsFor }}.
            Check the workers' logs, the broker errors panel and the dead-letter rate.
      - alert: DangerCLIPWorkerDown
        expr: up{ {{- $sel -}} } == 0
        for: {{ $r.workerDownFor }}
        labels:
          {{ $sev }}: critical
        annotations:
          summary: DangerCLIP worker {{ "{{ $labels.instance }}" }} is down
          description: >-
            Prometheus could not scrape {{ "{{ $labels.instance }}" }} for {{ $r.workerDownFor }}. Its
            partitions move to the other workers after the session timeout.
      - alert: DangerCLIPInferenceP99High
        expr: |-
          histogram_quantile(0.99,
            sum by (le) (rate(dangerclip_inference_duration_seconds_bucket{ {{- $sel -}} }[5m])))
          > {{ $r.inferenceP99BudgetSeconds }}
        for: {{ $r.inferenceP99For }}
        labels:
          {{ $sev }}: warning
        annotations:
          summary: DangerCLIP inference p99 above {{ $r.inferenceP99BudgetSeconds }}s per batch
          description: >-
            p99 of one batch's inference is {{ "{{ $value | humanizeDuration }}" }}. Check the execution
            provider in the model panel (a GPU worker fell back to CPU?), CPU throttling, or the batch size.
      - alert: DangerCLIPOffsetCommitsFailing
        expr: sum(rate(dangerclip_offset_commits_total{ {{- $sel -}}, outcome="failed"}[10m])) > 0
        for: 10m
        labels:
          {{ $sev }}: warning
        annotations:
          summary: DangerCLIP offset commits are failing
          description: >-
            Commits failed for 10 minutes: results are produced but offsets are not stored, so a restart
            re-scores those records (duplicates downstream). Usually rebalancing storms or broker trouble.
      {{- with $r.additionalRules }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
