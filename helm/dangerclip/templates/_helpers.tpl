{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "dangerclip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release name, plus the chart name unless the release already holds it. */}}
{{- define "dangerclip.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dangerclip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the worker. */}}
{{- define "dangerclip.labels" -}}
{{ include "dangerclip.baseLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels on every object, without the component (the Job and the test pod set their own). */}}
{{- define "dangerclip.baseLabels" -}}
helm.sh/chart: {{ include "dangerclip.chart" . }}
app.kubernetes.io/name: {{ include "dangerclip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dangerclip
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the worker pods (immutable once installed). */}}
{{- define "dangerclip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dangerclip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "dangerclip.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dangerclip.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag@digest; tag defaults to the chart's appVersion. Args: dict image, context. */}}
{{- define "dangerclip.imageRef" -}}
{{- $img := .image -}}
{{- $ref := $img.repository -}}
{{- if $img.registry }}{{ $ref = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- $tag := default .context.Chart.AppVersion $img.tag | toString -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $ref $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref $tag -}}
{{- end -}}
{{- end }}

{{/* The worker image: the GPU build when gpu.enabled. */}}
{{- define "dangerclip.workerImage" -}}
{{- if .Values.gpu.enabled -}}
{{- include "dangerclip.imageRef" (dict "image" (mergeOverwrite (deepCopy .Values.image) .Values.gpu.image) "context" .) -}}
{{- else -}}
{{- include "dangerclip.imageRef" (dict "image" .Values.image "context" .) -}}
{{- end -}}
{{- end }}

{{/* Most replicas that can do work: one consumer per input partition, never more. */}}
{{- define "dangerclip.maxReplicas" -}}
{{- min (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions) -}}
{{- end }}

{{/* Seconds SIGTERM may take: the worst batch, then the flush and commit (shutdown_timeout_s), plus slack. */}}
{{- define "dangerclip.drainSeconds" -}}
{{- add (int (ceil .Values.worker.worstBatchSeconds)) (int (ceil .Values.config.shutdown_timeout_s)) -}}
{{- end }}

{{- define "dangerclip.terminationGracePeriodSeconds" -}}
{{- $drain := include "dangerclip.drainSeconds" . | int -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed worker.worstBatchSeconds + config.shutdown_timeout_s (%d) so SIGTERM can finish the batch in flight, flush and commit" (int .Values.terminationGracePeriodSeconds) $drain) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds | int -}}
{{- else -}}
{{- add $drain 15 -}}
{{- end -}}
{{- end }}

{{/* A setting's value as the worker's environment reads it: strings as they are, the rest as JSON
(numbers without exponents, lists and maps as JSON documents that pydantic-settings parses). */}}
{{- define "dangerclip.envValue" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end }}

{{/* Whether a setting is left unset (the worker's default applies): null, "", {} or []. */}}
{{- define "dangerclip.isUnset" -}}
{{- if kindIs "invalid" . -}}true
{{- else if and (kindIs "string" .) (eq . "") -}}true
{{- else if and (or (kindIs "map" .) (kindIs "slice" .)) (eq (len .) 0) -}}true
{{- end -}}
{{- end }}

{{/* Where the model file is inside the worker container. */}}
{{- define "dangerclip.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.fileName -}}
{{- end }}

{{- define "dangerclip.tlsMountPath" -}}/etc/dangerclip/kafka-tls{{- end }}

{{/* A Kubernetes quantity ("3584Mi", "4Gi", "512M", "1000000") in bytes. */}}
{{- define "dangerclip.bytes" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $num) (not (hasKey $mult $suffix)) -}}
{{- fail (printf "cannot read the memory quantity %q (use e.g. 3584Mi or 4Gi)" $q) -}}
{{- end -}}
{{- mulf (float64 $num) (index $mult $suffix) | int64 -}}
{{- end }}

{{/* A Prometheus duration ("10m", "1h30m", "90s") in whole seconds. */}}
{{- define "dangerclip.seconds" -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 "y" 31536000.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" . -}}
{{- $total = addf $total (mulf (float64 $n) (index $units (trimPrefix $n .))) -}}
{{- end -}}
{{- $total | int -}}
{{- end }}

{{/* Seconds a starting worker may take before its HTTP server listens: the startup probe's budget. */}}
{{- define "dangerclip.startupBudgetSeconds" -}}
{{- $p := .Values.probes.startup -}}
{{- if $p.enabled -}}
{{- mul (int $p.periodSeconds) (int $p.failureThreshold) -}}
{{- else -}}
{{- mul (int .Values.probes.liveness.periodSeconds) (int .Values.probes.liveness.failureThreshold) -}}
{{- end -}}
{{- end }}

{{/* The label matchers every alert and the dashboard select this release's workers by: the job the
ServiceMonitor sets and the namespace the pods run in (two releases of one name in two namespaces never mix).
Usable in metrics.prometheusRule.additionalRules as {{ include "dangerclip.alertSelector" . }}. */}}
{{- define "dangerclip.alertSelector" -}}
{{- printf "job=%q, namespace=%q" (include "dangerclip.fullname" .) .Release.Namespace -}}
{{- end }}

{{/* Whether the release may run no worker at all (scale to zero): then "no scrape target" is no stall. */}}
{{- define "dangerclip.mayScaleToZero" -}}
{{- $a := .Values.autoscaling -}}
{{- if and (eq $a.mode "none") (eq (int .Values.replicaCount) 0) -}}true
{{- else if and (eq $a.mode "keda") (or (eq (int $a.minReplicas) 0) (and (not (kindIs "invalid" $a.keda.idleReplicaCount)) (eq (int $a.keda.idleReplicaCount) 0))) -}}true
{{- end -}}
{{- end }}

{{/* Checks that cannot be written in values.schema.json because they relate two values. */}}
{{- define "dangerclip.validate" -}}
{{- $partitions := int .Values.kafka.partitions -}}
{{- if and (eq .Values.autoscaling.mode "none") (gt (int .Values.replicaCount) $partitions) -}}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitions (%d): workers beyond the partition count sit idle" (int .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- if and (ne .Values.autoscaling.mode "none") (gt (int .Values.autoscaling.minReplicas) $partitions) -}}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds kafka.partitions (%d)" (int .Values.autoscaling.minReplicas) $partitions) -}}
{{- end -}}
{{- if and (ne .Values.autoscaling.mode "none") (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- $keda := .Values.autoscaling.keda -}}
{{- if and (eq .Values.autoscaling.mode "keda") $keda.fallback $keda.fallback.replicas (gt (int $keda.fallback.replicas) $partitions) -}}
{{- fail (printf "autoscaling.keda.fallback.replicas (%d) exceeds kafka.partitions (%d)" (int $keda.fallback.replicas) $partitions) -}}
{{- end -}}
{{- if and (eq .Values.autoscaling.mode "keda") (not (kindIs "invalid" $keda.idleReplicaCount)) (ge (int $keda.idleReplicaCount) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "autoscaling.keda.idleReplicaCount must be below autoscaling.minReplicas (KEDA's rule)" -}}
{{- end -}}
{{- if le (div (int .Values.config.max_poll_interval_ms) 1000) (int (ceil .Values.worker.worstBatchSeconds)) -}}
{{- fail (printf "config.max_poll_interval_ms (%d) must exceed worker.worstBatchSeconds, or the group evicts a worker in the middle of a slow batch" (int .Values.config.max_poll_interval_ms)) -}}
{{- end -}}
{{- $model := .Values.model -}}
{{- if and (eq $model.source "pvc") (not $model.pvc.claimName) -}}
{{- fail "model.source=pvc needs model.pvc.claimName" -}}
{{- end -}}
{{- if and (eq $model.source "image") (not $model.image.reference) -}}
{{- fail "model.source=image needs model.image.reference" -}}
{{- end -}}
{{- if and (eq $model.source "image") (semverCompare "<1.35-0" .Capabilities.KubeVersion.Version) (not $model.image.featureGateEnabled) -}}
{{- fail (printf "model.source=image needs image volumes, on by default from Kubernetes 1.35; this cluster is %s. On 1.31-1.34 with the ImageVolume feature gate turned on (API server and kubelets), set model.image.featureGateEnabled=true; otherwise use model.source=pvc or initContainer" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (eq $model.source "image") (semverCompare "<1.31-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "model.source=image needs Kubernetes 1.31 or later (this cluster is %s)" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (eq $model.source "initContainer") (not $model.initContainer.command) -}}
{{- fail "model.source=initContainer needs model.initContainer.command (it must write the model to $MODEL_DIR)" -}}
{{- end -}}
{{- include "dangerclip.validateResources" . -}}
{{- include "dangerclip.validateAlerts" . -}}
{{- if and .Values.config.group_instance_id (or (ne .Values.autoscaling.mode "none") (gt (int .Values.replicaCount) 1)) -}}
{{- fail "config.group_instance_id gives every worker the same static member id (the broker fences all but one); leave it unset and keep worker.staticMembership=true, which uses each pod's name" -}}
{{- end -}}
{{- $sec := .Values.kafka.security -}}
{{- $mechanism := toString .Values.config.sasl_mechanism -}}
{{- if and (hasPrefix "SASL" (toString .Values.config.security_protocol)) (not $sec.sasl.existingSecret) (has $mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail "config.security_protocol SASL_* with PLAIN/SCRAM needs kafka.security.sasl.existingSecret (a Secret holding the user name and password)" -}}
{{- end -}}
{{- if and (eq $mechanism "OAUTHBEARER") (not .Values.config.sasl_oauth_token_file) -}}
{{- fail "config.sasl_mechanism OAUTHBEARER needs config.sasl_oauth_token_file (a file the worker reads the token from, e.g. a projected service-account token in extraVolumes)" -}}
{{- end -}}
{{- if and (eq $mechanism "AWS_MSK_IAM") (ne (toString .Values.config.security_protocol) "SASL_SSL") -}}
{{- fail "config.sasl_mechanism AWS_MSK_IAM needs config.security_protocol SASL_SSL" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" (toString .Values.config.security_protocol)) (not .Values.config.sasl_mechanism) -}}
{{- fail "config.security_protocol SASL_* needs config.sasl_mechanism" -}}
{{- end -}}
{{- if and .Values.config.uri_fetch_enabled (not .Values.config.uri_allowed_hosts) -}}
{{- fail "config.uri_fetch_enabled needs config.uri_allowed_hosts (an empty allow-list fetches nothing)" -}}
{{- end -}}
{{- range .Values.worker.extraEnv -}}
{{- if hasPrefix "DANGERCLIP_" (toString .name) -}}
{{- fail (printf "worker.extraEnv sets %s: set worker settings in `config` (config.%s), where the schema checks them" .name (lower (trimPrefix "DANGERCLIP_" (toString .name)))) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.pseudomask.enabled (not .Values.pseudomask.data.claimName) -}}
{{- fail "pseudomask.enabled needs pseudomask.data.claimName (the PVC with the images and the manifest)" -}}
{{- end -}}
{{- end }}

{{/* Memory: requests = limits (a worker's memory peaks with its largest images; a request below the limit lets
the node overcommit and kill it mid-batch), and the bytes the settings let it hold fit inside the limit. */}}
{{- define "dangerclip.validateResources" -}}
{{- $res := default dict .Values.resources -}}
{{- $limits := default dict $res.limits -}}
{{- $requests := default dict $res.requests -}}
{{- if not $limits.memory -}}
{{- fail "resources.limits.memory is required: an unbounded worker can take a node's memory (see values.yaml for how the default is derived)" -}}
{{- end -}}
{{- $limit := include "dangerclip.bytes" $limits.memory | int64 -}}
{{- if and $requests.memory (ne (include "dangerclip.bytes" $requests.memory | int64) $limit) -}}
{{- fail (printf "resources.requests.memory (%v) must equal resources.limits.memory (%v): a request below the limit lets the node overcommit and OOM-kill a worker mid-batch (its batch is then scored again by the next owner)" $requests.memory $limits.memory) -}}
{{- end -}}
{{- if and (kindIs "invalid" .Values.config.intra_op_threads) (not $requests.cpu) -}}
{{- fail "resources.requests.cpu is required: the chart sets DANGERCLIP_INTRA_OP_THREADS from it (or set config.intra_op_threads)" -}}
{{- end -}}
{{- /* bench/decode_memory.py: a worker is the model process (~400 MB with the demo model) + the buffered input
+ the decodes the pixel budget lets through (at most 16.2 bytes a header pixel, WebP, x 1.28 allocator slack),
and that must stay within 90 % of the limit. Unset settings are the worker's defaults. */}}
{{- $buffered := float64 (default 134217728 .Values.config.max_buffered_bytes) -}}
{{- $decode := mulf (float64 (default 80000000 .Values.config.decode_budget_pixels)) 20.736 -}}
{{- $needed := addf 400000000.0 $buffered $decode -}}
{{- if gt $needed (mulf (float64 $limit) 0.9) -}}
{{- fail (printf "resources.limits.memory (%v) is below what the settings let a worker hold: ~400 MB model process + config.max_buffered_bytes (%.0f MB) + config.decode_budget_pixels x 20.7 bytes (%.0f MB) = %.0f MB must stay within 90%% of the limit (bench/decode_memory.py). Lower config.decode_budget_pixels (64000000 fits 2Gi) or raise the limit" $limits.memory (divf $buffered 1000000.0) (divf $decode 1000000.0) (divf $needed 1000000.0)) -}}
{{- end -}}
{{- end }}

{{/* Alert windows that would page on normal operation. */}}
{{- define "dangerclip.validateAlerts" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- $startup := include "dangerclip.startupBudgetSeconds" . | int -}}
{{- if and $r.workerDownFor (lt (include "dangerclip.seconds" $r.workerDownFor | int) $startup) -}}
{{- fail (printf "metrics.prometheusRule.workerDownFor (%s) is shorter than the startup probe's budget (%ds): a pod still starting (image pull, model download) would page. Leave it null to derive it" $r.workerDownFor $startup) -}}
{{- end -}}
{{- $batch := int (ceil .Values.worker.worstBatchSeconds) -}}
{{- if le (include "dangerclip.seconds" $r.commitStalledFor | int) $batch -}}
{{- fail (printf "metrics.prometheusRule.commitStalledFor (%s) must exceed worker.worstBatchSeconds (%ds): a slow batch is not a stall" $r.commitStalledFor $batch) -}}
{{- end -}}
{{- if le (include "dangerclip.seconds" $r.pollStalledFor | int) $batch -}}
{{- fail (printf "metrics.prometheusRule.pollStalledFor (%s) must exceed worker.worstBatchSeconds (%ds)" $r.pollStalledFor $batch) -}}
{{- end -}}
{{- end }}

{{/* The WorkerDown window: the configured one, or the startup budget plus a minute (a starting pod is a scrape
target before its HTTP server answers: image pull, model download, process start). */}}
{{- define "dangerclip.workerDownFor" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- if $r.workerDownFor -}}
{{- $r.workerDownFor -}}
{{- else -}}
{{- printf "%dm" (add (div (add (include "dangerclip.startupBudgetSeconds" . | int) 59) 60) 1) -}}
{{- end -}}
{{- end }}

{{/* The Kafka credentials from their Secrets, as environment variables (the worker and `helm test`'s doctor). */}}
{{- define "dangerclip.kafkaSecretEnv" -}}
{{- $tls := .Values.kafka.security.tls -}}
{{- $sasl := .Values.kafka.security.sasl -}}
{{- if $sasl.existingSecret }}
- name: DANGERCLIP_SASL_PLAIN_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $sasl.existingSecret }}
      key: {{ $sasl.usernameKey }}
- name: DANGERCLIP_SASL_PLAIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sasl.existingSecret }}
      key: {{ $sasl.passwordKey }}
{{- end }}
{{- if and $tls.existingSecret $tls.keyPasswordKey }}
- name: DANGERCLIP_SSL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $tls.existingSecret }}
      key: {{ $tls.keyPasswordKey }}
{{- end }}
{{- end }}
