{{/*
The DangerCLIP alert rules. Rendered into the PrometheusRule and, with the default values, release name
"dangerclip" and namespace "dangerclip", written to deploy/prometheus/alerts.yaml for the compose stack
(helm/tools/render_alerts.py; its Prometheus labels targets namespace="dangerclip"); the GPU group goes to
alerts-gpu.yaml. promtool checks and unit-tests both (alerts.test.yaml).

Every selector names the job the ServiceMonitor sets and the namespace the workers run in.
*/}}
{{- define "dangerclip.alertGroups" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- $job := include "dangerclip.fullname" . -}}
{{- $sel := include "dangerclip.alertSelector" . -}}
{{- $sev := $r.severityLabel -}}
{{- $pollStalled := include "dangerclip.seconds" $r.pollStalledFor | int -}}
{{- $commitStalled := include "dangerclip.seconds" $r.commitStalledFor | int -}}
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
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipconsumerlaggrowing
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
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipdeadletterratehigh
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
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipnoresults
          summary: DangerCLIP produces no results while input arrives
          description: >-
            Records are waiting or being consumed, but no result was written for {{ $r.noResultsFor }}.
            Check the workers' logs, the broker errors panel and the dead-letter rate.
      - alert: DangerCLIPWorkerDown
        # A starting pod is a scrape target (publishNotReadyAddresses) before anything answers: image pull, the
        # model download, the process start. The window covers the startup probe's budget, plus a minute.
        expr: up{ {{- $sel -}} } == 0
        for: {{ include "dangerclip.workerDownFor" . }}
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipworkerdown
          summary: DangerCLIP worker {{ "{{ $labels.instance }}" }} is down
          description: >-
            Prometheus could not scrape {{ "{{ $labels.instance }}" }} for {{ include "dangerclip.workerDownFor" . }}
            (longer than a start may take). Its partitions move to the other workers after the session
            timeout. Look at the pod's events, OOM kills and logs.
      - alert: DangerCLIPNoScrapeTargets
        # Nothing to scrape at all: every pod Pending, the Deployment gone, or the ServiceMonitor not selected
        # by Prometheus. WorkerDown cannot see this: it needs a target that answers `up == 0`.
        {{- if include "dangerclip.mayScaleToZero" . }}
        # This release may scale to zero, so only while the Deployment wants workers (kube-state-metrics).
        expr: |-
          absent(up{ {{- $sel -}} })
          and on()
          sum(kube_deployment_spec_replicas{namespace={{ .Release.Namespace | quote }}, deployment={{ $job | quote }}}) > 0
        {{- else }}
        expr: absent(up{ {{- $sel -}} })
        {{- end }}
        for: {{ $r.noTargetsFor }}
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipnoscrapetargets
          summary: DangerCLIP has no scrape targets in {{ .Release.Namespace }}
          description: >-
            Prometheus has scraped no {{ $job }} worker for {{ $r.noTargetsFor }}: pods Pending (resources, GPU
            nodes, image pulls), the Deployment scaled to nothing, or the ServiceMonitor not selected (its
            labels must match your Prometheus' serviceMonitorSelector, e.g. release=kube-prometheus-stack).
      - alert: DangerCLIPPartitionsUnassigned
        # The group owns fewer partitions than the input topic has: those are read by nobody (a rebalance that
        # never settles, a member that holds partitions and does nothing, too few live workers to be assigned).
        expr: |-
          max by (topic) (dangerclip_topic_partitions{ {{- $sel -}} })
          > on() group_left()
          sum(dangerclip_assigned_partitions{ {{- $sel -}} })
        for: {{ $r.partitionsUnassignedFor }}
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclippartitionsunassigned
          summary: DangerCLIP workers own fewer partitions than {{ "{{ $labels.topic }}" }} has
          description: >-
            {{ "{{ $labels.topic }}" }} has {{ "{{ $value }}" }} partitions and the workers' consumer group has
            owned fewer for {{ $r.partitionsUnassignedFor }}: the rest are read by no one. Check the "Partitions
            per worker" panel, rebalances, and other members of the group (kafka-consumer-groups --describe).
      - alert: DangerCLIPNotPolling
        # No successful poll: every poll failing (brokers unreachable, authentication, a broken client), or a
        # loop that stalled. A caught-up worker that stalls has a lag of 0, so only this catches it.
        expr: time() - dangerclip_last_poll_timestamp_seconds{ {{- $sel -}} } > {{ $pollStalled }}
        for: 1m
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipnotpolling
          summary: DangerCLIP worker {{ "{{ $labels.instance }}" }} has not polled Kafka for {{ $r.pollStalledFor }}
          description: >-
            The last successful poll of {{ "{{ $labels.instance }}" }} was {{ "{{ $value | humanizeDuration }}" }}
            ago. Check its logs and the broker errors panel (operation=poll, connect).
      - alert: DangerCLIPPartitionStalled
        # Records wait on a partition and its offset has not moved: consumption of that partition has stopped.
        expr: |-
          dangerclip_consumer_lag_records{ {{- $sel -}} } > 0
          and
          time() - dangerclip_last_commit_timestamp_seconds{ {{- $sel -}} } > {{ $commitStalled }}
        for: 1m
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclippartitionstalled
          summary: DangerCLIP partition {{ "{{ $labels.topic }}/{{ $labels.partition }}" }} is stalled
          description: >-
            {{ "{{ $value | humanize }}" }} records wait on {{ "{{ $labels.topic }}/{{ $labels.partition }}" }}
            and {{ "{{ $labels.instance }}" }} has committed none of them for more than {{ $r.commitStalledFor }}.
            Check that worker's logs, the circuit breaker and the commit failures panel.
      - alert: DangerCLIPCircuitOpen
        # The model keeps failing (a health probe with a blank image failing too): the worker has stopped
        # consuming rather than dead-letter the stream. It restarts itself after circuit_open_restart_s.
        expr: dangerclip_circuit_open{ {{- $sel -}} } == 1
        for: {{ $r.circuitOpenFor }}
        labels:
          {{ $sev }}: critical
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipcircuitopen
          summary: DangerCLIP worker {{ "{{ $labels.instance }}" }} stopped scoring (model failing)
          description: >-
            The model circuit breaker of {{ "{{ $labels.instance }}" }} has been open for {{ $r.circuitOpenFor }}:
            every batch fails, so it consumes nothing. Check its logs (inference errors, GPU, execution provider).
      - alert: DangerCLIPInferenceP99High
        expr: |-
          histogram_quantile(0.99,
            sum by (le) (rate(dangerclip_inference_duration_seconds_bucket{ {{- $sel -}} }[5m])))
          > {{ $r.inferenceP99BudgetSeconds }}
        for: {{ $r.inferenceP99For }}
        labels:
          {{ $sev }}: warning
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipinferencep99high
          summary: DangerCLIP inference p99 above {{ $r.inferenceP99BudgetSeconds }}s per batch
          description: >-
            p99 of one batch's inference is {{ "{{ $value | humanizeDuration }}" }}. Check the execution
            provider in the model panel (a GPU worker fell back to CPU?), CPU throttling, or the batch size.
      - alert: DangerCLIPOffsetCommitsFailing
        # A failure in every 5-minute window for 10 minutes: a rebalance's one failed commit does not fire.
        expr: sum(rate(dangerclip_offset_commits_total{ {{- $sel -}}, outcome="failed"}[5m])) > 0
        for: 10m
        labels:
          {{ $sev }}: warning
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipoffsetcommitsfailing
          summary: DangerCLIP offset commits are failing
          description: >-
            Offset commits have failed in every 5-minute window for the last 10 minutes: results are produced
            but offsets are not stored, so a restart re-scores those records (duplicates downstream). Usually
            rebalancing storms or broker trouble.
      {{- with $r.additionalRules }}
      {{- tpl (toYaml .) $ | nindent 6 }}
      {{- end }}
  {{- if .Values.gpu.enabled }}
  - name: {{ $job }}.gpu.rules
    rules:
      - alert: DangerCLIPScoringOnCPU
        # gpu.enabled: the pods hold GPUs, so a worker whose session runs on the CPU (providers=auto after a
        # CUDA failure) wastes them and scores tens of times slower.
        expr: dangerclip_model_info{ {{- $sel -}}, provider="CPUExecutionProvider"} == 1
        for: {{ $r.scoringOnCpuFor }}
        labels:
          {{ $sev }}: warning
        annotations:
          runbook_url: {{ $r.runbookBaseUrl }}#dangerclipscoringoncpu
          summary: DangerCLIP GPU worker {{ "{{ $labels.instance }}" }} scores on the CPU
          description: >-
            {{ "{{ $labels.instance }}" }} holds a GPU but its onnxruntime session runs on CPUExecutionProvider
            (model {{ "{{ $labels.version }}" }}): the CUDA provider did not start. Its log has the WARNING that
            says why; set config.providers=cuda to make such a worker fail instead.
  {{- end }}
{{- end }}
