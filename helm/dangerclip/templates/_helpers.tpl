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
{{- if and (eq $model.source "image") (semverCompare "<1.31-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "model.source=image needs image volumes (Kubernetes 1.31+ with the ImageVolume feature; beta from 1.33); this cluster is %s: use pvc or initContainer" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (eq $model.source "initContainer") (not $model.initContainer.command) -}}
{{- fail "model.source=initContainer needs model.initContainer.command (it must write the model to $MODEL_DIR)" -}}
{{- end -}}
{{- $sec := .Values.kafka.security -}}
{{- if and (hasPrefix "SASL" (toString .Values.config.security_protocol)) (not $sec.sasl.existingSecret) (ne (toString .Values.config.sasl_mechanism) "GSSAPI") (ne (toString .Values.config.sasl_mechanism) "OAUTHBEARER") -}}
{{- fail "config.security_protocol SASL_* with PLAIN/SCRAM needs kafka.security.sasl.existingSecret (a Secret holding the user name and password)" -}}
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
