"""The Helm chart, with real Helm: lint, schema, render, and what the rendered objects promise."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    helm,
    kinds,
    load_values,
    merged_values,
    one,
    render,
    settings_env_names,
    worker_container,
    worker_env,
)

VALUE_FILES = [None, *CI_VALUES]
IDS = ["default"] + [p.name for p in CI_VALUES]


def _ci(name: str) -> dict[str, Any]:
    return load_values(CHART / "ci" / name) or {}


def test_there_are_ci_values_for_every_mode() -> None:
    names = {p.name for p in CI_VALUES}
    assert len(names) >= 6, names
    modes = {(_ci(n).get("autoscaling") or {}).get("mode", "none") for n in names}
    assert modes == {"none", "hpa", "keda"}
    sources = {(_ci(n).get("model") or {}).get("source", "baked") for n in names}
    assert sources == {"baked", "image", "pvc", "initContainer"}


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_helm_lint_is_clean(values_file: Path | None) -> None:
    report = helm().lint(str(CHART), load_values(values_file), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert problems == [], problems


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_renders_valid_objects(values_file: Path | None) -> None:
    docs = render(load_values(values_file))
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= set(kinds(docs))
    for d in docs:
        assert d["apiVersion"] and d["kind"], d
        name = d["metadata"]["name"]
        assert len(name) <= 63 and name == name.lower(), name
        if d["kind"] != "Pod":  # the helm test pod carries its own component label
            assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "dangerclip"
    # Exactly one workload of each name, and the Service selects only worker pods.
    svc = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "worker"


# Kubernetes versions each example needs beyond the chart's kubeVersion (1.27): image volumes, per-shard retries.
MIN_KUBE = {"model-image-values.yaml": "1.35", "pseudomask-values.yaml": "1.29"}


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_rendered_objects_match_the_kubernetes_api_schemas(values_file: Path | None) -> None:
    """Every built-in object validates (strictly: no unknown fields) against Kubernetes' own OpenAPI schemas,
    at the oldest version the example supports and at the newest. CRDs (KEDA, prometheus-operator) have none."""
    kv = pytest.importorskip("kubernetes_validate")
    oldest = MIN_KUBE.get(values_file.name if values_file else "", "1.27")
    checked = 0
    for doc in render(load_values(values_file)):
        obj = {k: v for k, v in doc.items() if k != "_template"}
        if obj["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com"):
            continue
        for version in (oldest, kv.latest_version()):
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(
                    f"{obj['kind']} {obj['metadata']['name']} on Kubernetes {version}: {e.message} at {list(e.path)}"
                )
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_env_names_are_the_worker_settings(values_file: Path | None) -> None:
    values = load_values(values_file) or {}
    env = worker_env(render(values))
    extra = {e["name"] for e in (values.get("worker") or {}).get("extraEnv", [])}
    ours = {name for name in env if name not in extra}
    unknown = ours - settings_env_names()
    assert not unknown, f"the chart sets variables the worker does not read: {sorted(unknown)}"
    assert not any(name.startswith("DANGERCLIP_") for name in extra), "extraEnv is not for settings"


def _tools():
    sys.path.insert(0, str(REPO / "helm" / "tools"))
    import sync_settings

    return sync_settings


def test_chart_covers_every_setting() -> None:
    """Over the default values and the ci files, the chart sets every variable the settings read, except the
    ones it must never set (the chaos hook), which no rendering sets."""
    never = {"DANGERCLIP_" + name.upper() for name in _tools().CHART_NEVER}
    assert "DANGERCLIP_FAULT_INJECTION" in never
    seen: set[str] = set()
    for values_file in VALUE_FILES:
        seen |= set(worker_env(render(load_values(values_file))))
    assert not seen & never, f"the chart sets {sorted(seen & never)}"
    missing = settings_env_names() - seen - never
    assert not missing, (
        f"settings the chart never sets: {sorted(missing)}; rerun helm/tools/sync_settings.py "
        f"and set the ones whose default is null in a ci/*-values.yaml"
    )
    with pytest.raises(helm().HelmRenderError, match="config.max_batch_size"):
        render({"worker": {"extraEnv": [{"name": "DANGERCLIP_MAX_BATCH_SIZE", "value": "8"}]}})
    with pytest.raises(helm().HelmRenderError, match="config.fault_injection"):
        render({"worker": {"extraEnv": [{"name": "DANGERCLIP_FAULT_INJECTION", "value": "exit_after_flush:1"}]}})
    h = helm()
    with h.Chart.load(str(CHART)) as chart, pytest.raises(h.HelmValuesError, match="fault_injection"):
        chart.validate_schema({"config": {"fault_injection": "exit_after_flush:1"}})


def test_values_config_block_is_the_settings() -> None:
    """values.yaml's ``config`` and the schema's ``config`` name every user-set setting, nothing else."""
    from service.settings import Settings

    sync_settings = _tools()
    user_set = set(Settings.model_fields) - set(sync_settings.CHART_MANAGED) - set(sync_settings.CHART_NEVER)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values["config"]) == user_set
    assert set(schema["properties"]["config"]["properties"]) == user_set
    assert schema["properties"]["config"]["additionalProperties"] is False
    # Chart-managed settings really are rendered by the templates (from the matching ci file).
    assert set(sync_settings.CHART_MANAGED) <= {n[len("DANGERCLIP_") :].lower() for n in settings_env_names()}


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_rendered_env_builds_the_real_settings(values_file: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own Settings accept what the chart renders, with the values the user asked for."""
    from service.settings import Settings

    values = load_values(values_file)
    env = worker_env(render(values))
    config = merged_values(values)["config"]
    for name in list(os.environ):
        if name.startswith("DANGERCLIP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-a-secret")
    settings = Settings(_env_file=None)
    for key, want in config.items():
        if want is None or want == "" or want == {} or want == []:
            continue
        got = getattr(settings, key)
        if isinstance(got, Path):
            got = str(got)
        if isinstance(want, float) and not isinstance(got, bool):
            assert math.isclose(float(got), want), key
        else:
            assert got == want, f"{key}: rendered {env.get('DANGERCLIP_' + key.upper())!r} -> {got!r}, want {want!r}"
    assert str(settings.model_path) == env["DANGERCLIP_MODEL_PATH"]
    assert settings.metrics_host == "0.0.0.0" and settings.metrics_enabled is True


# ---------------------------------------------------------------------------- pod spec
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_secure_pod_and_container_security_contexts(values_file: Path | None) -> None:
    docs = render(load_values(values_file))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
    assert pods
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc.get("privileged", False) is False
            assert sc["runAsNonRoot"] is True
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["name"] != "check":
                assert "/tmp" in mounts, f"{c['name']} has a read-only root and no writable /tmp"


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_probes_hit_healthz_and_readyz_on_the_metrics_port(values_file: Path | None) -> None:
    docs = render(load_values(values_file))
    c = worker_container(docs)
    env = worker_env(docs)
    (port,) = c["ports"]
    assert port["name"] == "metrics" and str(port["containerPort"]) == env["DANGERCLIP_METRICS_PORT"]
    assert env["DANGERCLIP_METRICS_HOST"] == "0.0.0.0"
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    svc = one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert str(svc["spec"]["ports"][0]["port"]) == env["DANGERCLIP_METRICS_PORT"]


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=IDS)
def test_termination_grace_covers_the_worst_batch_and_the_drain(values_file: Path | None) -> None:
    values = load_values(values_file)
    docs = render(values)
    merged = merged_values(values)
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = merged["worker"]["worstBatchSeconds"] + merged["config"]["shutdown_timeout_s"]
    assert grace > drain
    # The group must not evict a worker in the middle of its slowest batch either.
    assert merged["config"]["max_poll_interval_ms"] / 1000 > merged["worker"]["worstBatchSeconds"]


def test_too_short_grace_period_or_poll_interval_fails_the_install() -> None:
    h = helm()
    with pytest.raises(h.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 20, "worker": {"worstBatchSeconds": 10}})
    with pytest.raises(h.HelmRenderError, match="max_poll_interval_ms"):
        render({"config": {"max_poll_interval_ms": 5000}, "worker": {"worstBatchSeconds": 10}})


def test_rollout_replaces_one_worker_at_a_time_without_surge() -> None:
    """A surge worker beyond the partition count gets no partition, is never ready, and stalls the rollout."""
    strategy = one(render({"replicaCount": 12, "kafka": {"partitions": 12}}), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_settings_change_rolls_the_workers() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"max_batch_size": 32}})
    assert checksum({}) == checksum({"podLabels": {"team": "trust-and-safety"}})


# ---------------------------------------------------------------------------- scaling
def test_fixed_replicas_never_exceed_partitions() -> None:
    h = helm()
    deploy = one(render({"replicaCount": 12, "kafka": {"partitions": 12}}), "Deployment")
    assert deploy["spec"]["replicas"] == 12
    with pytest.raises(h.HelmRenderError, match="exceeds kafka.partitions"):
        render({"replicaCount": 13, "kafka": {"partitions": 12}})


def test_hpa_mode_caps_max_replicas_at_partitions() -> None:
    docs = render(_ci("hpa-monitoring-values.yaml"))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["maxReplicas"] == 6  # maxReplicas 10, 6 partitions
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(docs, "Deployment")["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"
    assert "ScaledObject" not in kinds(docs)


def test_keda_mode_scales_on_group_lag_capped_at_partitions() -> None:
    values = _ci("keda-sasl-values.yaml")
    docs = render(values)
    so = one(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["maxReplicaCount"] == 24  # maxReplicas 100, 24 partitions
    assert spec["minReplicaCount"] == 2 and spec["idleReplicaCount"] == 0
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    config = values["config"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == config["bootstrap_servers"]
    assert meta["consumerGroup"] == merged_values(values)["config"]["group_id"]
    assert meta["topic"] == merged_values(values)["config"]["input_topic"]
    assert meta["lagThreshold"] == "500" and meta["allowIdleConsumers"] == "false"
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert params == {
        "username": ("dangerclip-kafka-user", "username"),
        "password": ("dangerclip-kafka-user", "password"),
        "ca": ("dangerclip-kafka-tls", "ca.crt"),
        "cert": ("dangerclip-kafka-tls", "tls.crt"),
        "key": ("dangerclip-kafka-tls", "tls.key"),
        "keyPassword": ("dangerclip-kafka-tls", "key-password"),
    }
    assert "replicas" not in one(docs, "Deployment")["spec"]
    assert "HorizontalPodAutoscaler" not in kinds(docs), "KEDA makes its own HPA"
    # TLS with the system CAs and no client certificate: no credentials to hand the scaler.
    plain_tls = render({"autoscaling": {"mode": "keda"}, "config": {"security_protocol": "SSL"}})
    assert "TriggerAuthentication" not in kinds(plain_tls)
    (trigger,) = one(plain_tls, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["tls"] == "enable" and "authenticationRef" not in trigger


def test_autoscaling_min_above_partitions_fails() -> None:
    h = helm()
    with pytest.raises(h.HelmRenderError, match="minReplicas"):
        render({"autoscaling": {"mode": "keda", "minReplicas": 5}, "kafka": {"partitions": 4}})
    with pytest.raises(h.HelmRenderError, match="fallback.replicas"):
        render(
            {
                "autoscaling": {"mode": "keda", "keda": {"fallback": {"failureThreshold": 3, "replicas": 9}}},
                "kafka": {"partitions": 4},
            }
        )
    with pytest.raises(h.HelmRenderError, match="idleReplicaCount"):
        render({"autoscaling": {"mode": "keda", "minReplicas": 1, "keda": {"idleReplicaCount": 1}}})


def test_pdb_takes_workers_one_at_a_time() -> None:
    pdb = one(render(), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert one(render(_ci("hpa-monitoring-values.yaml")), "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": pdb["spec"]["selector"],
    }


# ---------------------------------------------------------------------------- model, GPU, secrets
def test_model_sources() -> None:
    baked = render()
    assert worker_env(baked)["DANGERCLIP_MODEL_PATH"] == "/models/model.onnx"
    assert "/models" not in {m["mountPath"] for m in worker_container(baked)["volumeMounts"]}

    pvc = render(_ci("gpu-pvc-values.yaml"))
    (mount,) = [m for m in worker_container(pvc)["volumeMounts"] if m["name"] == "model"]
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "vit-b-16/v3"}
    vols = {v["name"]: v for v in one(pvc, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "dangerclip-models", "readOnly": True}

    image = render(_ci("model-image-values.yaml"))
    vols = {v["name"]: v for v in one(image, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["model"]["image"]["reference"] == "registry.example.com/models/dangerclip-vit-b-16:v3"
    assert one(image, "Deployment")["metadata"]["name"] == "moderation-workers"

    init = render(_ci("model-init-values.yaml"))
    pod = one(init, "Deployment")["spec"]["template"]["spec"]
    (ic,) = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in ic["env"]}
    assert env["MODEL_DIR"] == "/models" and env["MODEL_FILE"] == "model.onnx"
    assert {"name": "model", "mountPath": "/models"} in ic["volumeMounts"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["model"]
    assert ic["image"] == "amazon/aws-cli:2.22.0"


def test_model_source_needs_its_reference() -> None:
    h = helm()
    for values, msg in [
        ({"model": {"source": "pvc"}}, "claimName"),
        ({"model": {"source": "image"}}, "reference"),
        ({"model": {"source": "initContainer"}}, "command"),
    ]:
        with pytest.raises(h.HelmRenderError, match=msg):
            render(values)


def test_gpu_workers() -> None:
    docs = render(_ci("gpu-pvc-values.yaml"))
    c = worker_container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["image"] == "ghcr.io/dangerclip/dangerclip-serve-gpu:0.1.0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["memory"] == "8Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert worker_env(docs)["DANGERCLIP_PROVIDERS"] == "cuda"
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    cpu = render()
    assert "nvidia.com/gpu" not in worker_container(cpu)["resources"].get("limits", {})
    assert worker_container(cpu)["image"] == "ghcr.io/dangerclip/dangerclip-serve:0.1.0"


def test_sasl_and_tls_come_from_secrets() -> None:
    docs = render(_ci("keda-sasl-values.yaml"))
    env = worker_env(docs)
    assert env["DANGERCLIP_SASL_PLAIN_USERNAME"] == {
        "secretKeyRef": {"name": "dangerclip-kafka-user", "key": "username"}
    }
    assert env["DANGERCLIP_SASL_PLAIN_PASSWORD"] == {
        "secretKeyRef": {"name": "dangerclip-kafka-user", "key": "password"}
    }
    assert env["DANGERCLIP_SSL_PASSWORD"] == {"secretKeyRef": {"name": "dangerclip-kafka-tls", "key": "key-password"}}
    tls_mount = [m for m in worker_container(docs)["volumeMounts"] if m["name"] == "kafka-tls"][0]
    for var, key in [
        ("DANGERCLIP_SSL_CAFILE", "ca.crt"),
        ("DANGERCLIP_SSL_CERTFILE", "tls.crt"),
        ("DANGERCLIP_SSL_KEYFILE", "tls.key"),
    ]:
        assert env[var] == f"{tls_mount['mountPath']}/{key}"
    assert tls_mount["readOnly"] is True
    # No secret value ever lands in the ConfigMap.
    cm = one(docs, "ConfigMap")["data"]
    assert not {"DANGERCLIP_SASL_PLAIN_PASSWORD", "DANGERCLIP_SSL_PASSWORD"} & set(cm)
    with pytest.raises(helm().HelmRenderError, match="existingSecret"):
        render({"config": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}})


# ---------------------------------------------------------------------------- schema
@pytest.mark.parametrize(
    "bad, where",
    [
        ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),
        ({"config": {"max_batch_size": 0}}, "/config/max_batch_size"),
        ({"config": {"max_batchsize": 8}}, "max_batchsize"),
        ({"config": {"danger_map": "full"}}, "/config/danger_map"),
        ({"config": {"security_protocol": "TLS"}}, "/config/security_protocol"),
        ({"config": {"thresholds": {"weapon": "high"}}}, "/config/thresholds"),
        ({"model": {"source": "s3"}}, "/model/source"),
        ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"gpu": {"enabled": "yes"}}, "/gpu/enabled"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
        ({"pseudomask": {"shards": 0}}, "/pseudomask/shards"),
        ({"unknownTopLevel": 1}, "unknownTopLevel"),
    ],
)
def test_schema_rejects_wrong_values_at_install_time(bad: dict[str, Any], where: str) -> None:
    h = helm()
    with h.Chart.load(str(CHART)) as chart, pytest.raises(h.HelmValuesError) as err:
        chart.validate_schema(bad)
    assert where in str(err.value)


# ---------------------------------------------------------------------------- monitoring objects
# Every selector in a rule: a metric name, then its matchers.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][\w:]*)\{([^}]*)\}")


def _rules(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"]}


def test_monitoring_objects_carry_the_label_kube_prometheus_stack_selects() -> None:
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules labelled
    ``release: <its release>`` by default; a values file can name another release."""
    values = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    docs = render(values)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    ci = _ci("hpa-monitoring-values.yaml")
    docs = render(ci)
    assert (
        one(docs, "ServiceMonitor")["metadata"]["labels"]["release"]
        == ci["metrics"]["serviceMonitor"]["labels"]["release"]
    )
    assert (
        one(docs, "PrometheusRule")["metadata"]["labels"]["release"]
        == ci["metrics"]["prometheusRule"]["labels"]["release"]
    )


@pytest.mark.parametrize(
    "values, release",
    [
        ({}, "dangerclip"),
        (_ci("hpa-monitoring-values.yaml"), "moderation-prod"),
        ({"gpu": {"enabled": True}, "autoscaling": {"mode": "keda", "minReplicas": 0}}, "dangerclip"),
    ],
    ids=["default", "hpa-monitoring+other-release", "gpu+scale-to-zero"],
)
def test_every_rule_selects_the_release_job_and_namespace(values: dict[str, Any], release: str) -> None:
    """Each selector of a DangerCLIP metric (and ``up``) in every rule, additional rules too, names the job the
    ServiceMonitor sets and the namespace the pods run in: two releases never mix, whatever their names."""
    values = {**values, "metrics": {**values.get("metrics", {}), "serviceMonitor": {"enabled": True}}}
    values["metrics"]["prometheusRule"] = {**values["metrics"].get("prometheusRule", {}), "enabled": True}
    docs = render(values, release=release)
    sm = one(docs, "ServiceMonitor")
    (ep,) = sm["spec"]["endpoints"]
    job = [r for r in ep["relabelings"] if r.get("targetLabel") == "job"][0]["replacement"]
    assert job == one(docs, "Deployment")["metadata"]["name"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    spec = one(docs, "PrometheusRule")["spec"]
    checked = 0
    for name, rule in _rules(spec).items():
        for metric, matchers in _SELECTOR.findall(rule["expr"]):
            if not (metric.startswith("dangerclip_") or metric == "up"):
                continue
            assert f'job="{job}"' in matchers and f'namespace="{NAMESPACE}"' in matchers, (name, metric, matchers)
            checked += 1
    assert checked >= 15


def test_prometheusrule_passes_promtool(promtool: str, tmp_path: Path) -> None:
    for values in [
        {"metrics": {"prometheusRule": {"enabled": True}}},
        {"metrics": {"prometheusRule": {"enabled": True}}, "gpu": {"enabled": True}},
        {"metrics": {"prometheusRule": {"enabled": True}}, "autoscaling": {"mode": "keda", "minReplicas": 0}},
        _ci("hpa-monitoring-values.yaml"),
    ]:
        spec = one(render(values), "PrometheusRule")["spec"]
        f = tmp_path / "rules.yaml"
        f.write_text(yaml.safe_dump(spec))
        out = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    rules = _rules(spec)
    assert list(rules)[-1] == "DangerCLIPManyFlagged"  # additionalRules appended
    assert "> 0.02" in rules["DangerCLIPDeadLetterRateHigh"]["expr"]
    assert "> 0.25" in rules["DangerCLIPInferenceP99High"]["expr"]


def test_gpu_releases_alert_when_a_worker_scores_on_the_cpu() -> None:
    cpu = _rules(one(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")["spec"])
    gpu = _rules(
        one(render(_ci("gpu-pvc-values.yaml") | {"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")[
            "spec"
        ]
    )
    assert "DangerCLIPScoringOnCPU" not in cpu, "a CPU release scores on the CPU by design"
    expr = gpu["DangerCLIPScoringOnCPU"]["expr"]
    assert "dangerclip_model_info{" in expr and 'provider="CPUExecutionProvider"' in expr


def test_no_target_alert_tolerates_scale_to_zero_only_where_it_can_happen() -> None:
    """absent(up) pages when nothing can be scraped; a release that may scale to zero (KEDA idle replicas 0,
    minReplicas 0) asks kube-state-metrics whether the Deployment wants workers first."""

    def expr(values: dict[str, Any]) -> str:
        values = values | {"metrics": {"prometheusRule": {"enabled": True}}}
        return _rules(one(render(values), "PrometheusRule")["spec"])["DangerCLIPNoScrapeTargets"]["expr"]

    assert expr({}).startswith("absent(up{") and "kube_deployment_spec_replicas" not in expr({})
    assert "kube_deployment_spec_replicas" not in expr(_ci("hpa-monitoring-values.yaml"))
    for values in (
        _ci("keda-sasl-values.yaml"),
        {"autoscaling": {"mode": "keda", "minReplicas": 0}},
        {"replicaCount": 0},
    ):
        e = expr(values)
        assert "absent(up{" in e and "kube_deployment_spec_replicas{" in e and f'namespace="{NAMESPACE}"' in e


def test_alert_windows_that_would_page_on_normal_operation_fail_the_install() -> None:
    h = helm()
    spec = one(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")["spec"]
    startup = merged_values()["probes"]["startup"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    down_for = _rules(spec)["DangerCLIPWorkerDown"]["for"]
    assert down_for.endswith("m") and int(down_for[:-1]) * 60 > budget_s, "a model load is not an outage"
    with pytest.raises(h.HelmRenderError, match="workerDownFor"):
        render({"metrics": {"prometheusRule": {"enabled": True, "workerDownFor": "2m"}}})
    longer = {"metrics": {"prometheusRule": {"enabled": True}}, "probes": {"startup": {"failureThreshold": 120}}}
    assert int(_rules(one(render(longer), "PrometheusRule")["spec"])["DangerCLIPWorkerDown"]["for"][:-1]) * 60 > 600
    with pytest.raises(h.HelmRenderError, match="commitStalledFor"):
        render({"metrics": {"prometheusRule": {"commitStalledFor": "30s"}}, "worker": {"worstBatchSeconds": 60}})


def test_grafana_dashboard_configmap_is_the_dashboard() -> None:
    cm = one(render(_ci("hpa-monitoring-values.yaml")), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "DangerCLIP"
    shipped = json.loads(cm["data"]["dangerclip.json"])
    assert shipped == json.loads((REPO / "deploy/grafana/dashboards/dangerclip.json").read_text())


def test_network_policy() -> None:
    docs = render(_ci("networkpolicy-uri-values.yaml"))
    np_ = one(docs, "NetworkPolicy")["spec"]
    assert np_["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = np_["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "monitoring"
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in np_["egress"]]
    assert {53} in egress_ports and {9092, 9093, 9094} in egress_ports and {80, 443} in egress_ports
    no_uri = one(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]
    assert {80, 443} not in [{p["port"] for p in rule["ports"]} for rule in no_uri["egress"]]
    assert "NetworkPolicy" not in kinds(render())


# ---------------------------------------------------------------------------- pseudo-mask job
def test_pseudomask_indexed_job_shards_the_manifest() -> None:
    docs = render(_ci("pseudomask-values.yaml"))
    job = one(docs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 16 and spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 2 and spec["activeDeadlineSeconds"] == 86400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/dangerclip/dangerclip-train:0.1.0"
    args = c["args"]
    assert args[0] == "pseudomask"
    assert args[args.index("--shard") + 1] == "$(SHARD_INDEX)/16"
    (shard_env,) = [e for e in c["env"] if e["name"] == "SHARD_INDEX"]
    assert (
        shard_env["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["weights"]["readOnly"] is True and mounts["data"]["mountPath"] == "/data"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # The Job's pods are not worker pods: the Service and PDB never select them.
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "pseudomask"
    assert "Job" not in kinds(render())
    with pytest.raises(helm().HelmRenderError, match="claimName"):
        render({"pseudomask": {"enabled": True}})


def test_pseudomask_job_is_named_after_its_spec() -> None:
    """A Job's pod template is immutable, so an upgrade must never patch it: a changed spec gets a new name
    (a new Job; Helm deletes the old), an unchanged one keeps its name (the finished Job is left alone)."""
    values = _ci("pseudomask-values.yaml")

    def job(v: dict[str, Any], release: str = "dangerclip") -> dict[str, Any]:
        return one(render(v, release=release), "Job")

    first = job(values)
    assert job(values)["metadata"]["name"] == first["metadata"]["name"]
    unrelated = values | {"config": {"max_batch_size": 32}, "replicaCount": 1}
    assert job(unrelated)["metadata"]["name"] == first["metadata"]["name"], "a worker setting is not the Job's"
    for change in ({"shards": 32}, {"args": ["/data/other.jsonl", "--out", "/data/pm2"]}, {"image": {"tag": "0.2.0"}}):
        changed = values | {"pseudomask": {**values["pseudomask"], **change}}
        other = job(changed)
        assert other["metadata"]["name"] != first["metadata"]["name"], change
        assert other["metadata"]["name"].startswith("dangerclip-pseudomask-")
    # Pod host names of an Indexed Job are <job>-<index>: the name leaves room for the index within 63.
    long = job(values, release="a-release-name-that-is-quite-long-indeed-for-moderation")
    assert len(long["metadata"]["name"]) <= 56
    # No TTL by default: a TTL-deleted Job would be created again (and re-run) by the next upgrade.
    assert "ttlSecondsAfterFinished" not in first["spec"]


def test_pseudomask_job_args_parse_with_the_real_cli() -> None:
    """What pod 5 of 16 runs is a valid ``dangerclip pseudomask`` command line, with files on its volumes."""
    import argparse

    job = pytest.importorskip("pseudomask.cli")
    (c,) = one(render(_ci("pseudomask-values.yaml")), "Job")["spec"]["template"]["spec"]["containers"]
    argv = [a.replace("$(SHARD_INDEX)", "5") for a in c["args"]]
    assert argv[0] == "pseudomask"
    parser = argparse.ArgumentParser(prog="dangerclip pseudomask")
    job.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    assert args.shard == (5, 16)
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for path in (args.input, args.out, args.sam_checkpoint, args.dino_checkpoint, args.bert_dir):
        assert any(path.startswith(m + "/") for m in mounts), f"{path} is on no volume of the job pod"


# ---------------------------------------------------------------------------- generated files
def test_every_value_is_documented() -> None:
    """Each leaf of values.yaml has a ``## @param`` on itself or on the map that holds it."""
    sys.path.insert(0, str(REPO / "helm" / "tools"))
    import values_table

    documented = {key for _, rows in values_table.params((CHART / "values.yaml").read_text()) for key, _ in rows}

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [
        leaf for leaf in leaves(values) if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not undocumented, undocumented
    assert len(documented) > 150


@pytest.mark.parametrize(
    "tool",
    [
        "helm/tools/sync_settings.py",
        "helm/tools/render_alerts.py",
        "helm/tools/values_table.py",
        "deploy/grafana/build_dashboard.py",
    ],
)
def test_generated_files_are_up_to_date(tool: str) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / tool), "--check"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
