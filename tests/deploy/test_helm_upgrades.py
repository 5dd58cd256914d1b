"""Installs and upgrades that work: KEDA's trigger derived from the worker's own settings, what the scaler
needs per SASL mechanism, the HPA -> KEDA switch in one upgrade, image volumes only where the cluster has them.

(The pseudo-mask Job's spec-hash name is tested with the Job in test_helm_chart.py; the KEDA -> HPA guard uses
``lookup``, which is empty offline: only a cluster exercises it.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import CHART, helm, kinds, load_values, one, render, worker_env

KEDA_FILES = sorted(p for p in (CHART / "ci").glob("*-values.yaml") if "keda" in p.name)


def _trigger(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    return trigger


def _settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The worker's own Settings, built from exactly what the chart gives the container."""
    from service.settings import Settings

    for name in list(os.environ):
        if name.startswith("DANGERCLIP_"):
            monkeypatch.delenv(name)
    for name, value in worker_env(docs).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-a-secret")
    return Settings(_env_file=None)


# ---------------------------------------------------------------------------- the trigger is the worker's
KEDA_CASES = [pytest.param(load_values(p), id=p.name) for p in KEDA_FILES] + [
    pytest.param({"autoscaling": {"mode": "keda"}}, id="defaults"),
    pytest.param({"autoscaling": {"mode": "keda"}, "config": {"auto_offset_reset": "latest"}}, id="latest"),
    pytest.param({"autoscaling": {"mode": "keda"}, "config": {"auto_offset_reset": None}}, id="reset-unset"),
    pytest.param(
        {"autoscaling": {"mode": "keda"}, "config": {"security_protocol": "SSL", "ssl_check_hostname": False}},
        id="ssl-no-hostname-check",
    ),
]


@pytest.mark.parametrize("values", KEDA_CASES)
def test_keda_trigger_is_derived_from_the_worker_settings(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scaler watches the group, topic and brokers the workers use, counts lag of uncommitted partitions
    from where the workers start reading them, speaks TLS when they do, and skips certificate checks only when
    the workers skip host-name checks (KEDA has no narrower switch)."""
    docs = render(values)
    settings = _settings(docs, monkeypatch)
    meta = _trigger(docs)["metadata"]
    assert meta["bootstrapServers"] == settings.bootstrap_servers
    assert meta["consumerGroup"] == settings.group_id
    assert meta["topic"] == settings.input_topic
    assert meta["offsetResetPolicy"] == settings.auto_offset_reset
    assert (meta.get("tls") == "enable") == settings.security_protocol.endswith("SSL")
    uses_tls = settings.security_protocol.endswith("SSL")
    assert (meta.get("unsafeSsl") == "true") == (uses_tls and not settings.ssl_check_hostname)
    assert meta["allowIdleConsumers"] == "false"


@pytest.mark.parametrize(
    "mechanism, sasl",
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512")],
)
def test_user_name_mechanisms_reuse_the_workers_secret(mechanism: str, sasl: str) -> None:
    values = {
        "autoscaling": {"mode": "keda"},
        "config": {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism},
        "kafka": {"security": {"sasl": {"existingSecret": "kafka-user"}}},
    }
    docs = render(values)
    trigger = _trigger(docs)
    assert trigger["metadata"]["sasl"] == sasl
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}


@pytest.mark.parametrize(
    "config, needs",
    [
        ({"sasl_mechanism": "GSSAPI"}, "keytab"),
        ({"sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_file": "/var/run/token"}, "oauthTokenEndpointUri"),
        ({"sasl_mechanism": "AWS_MSK_IAM"}, "awsRoleArn"),
    ],
)
def test_mechanisms_the_chart_cannot_authenticate_need_a_trigger_authentication(
    config: dict[str, Any], needs: str
) -> None:
    values = {"autoscaling": {"mode": "keda"}, "config": {"security_protocol": "SASL_SSL", **config}}
    with pytest.raises(helm().HelmRenderError, match="autoscaling.keda.authenticationRef") as err:
        render(values)
    assert needs in str(err.value)
    values["autoscaling"]["keda"] = {
        "authenticationRef": {"name": "kafka-scaler", "kind": "ClusterTriggerAuthentication"}
    }
    if config["sasl_mechanism"] == "AWS_MSK_IAM":
        with pytest.raises(helm().HelmRenderError, match="awsRegion"):
            render(values)
        values["autoscaling"]["keda"]["awsRegion"] = "eu-west-1"
    docs = render(values)
    trigger = _trigger(docs)
    assert trigger["authenticationRef"] == {"name": "kafka-scaler", "kind": "ClusterTriggerAuthentication"}
    assert "TriggerAuthentication" not in kinds(docs)
    meta = trigger["metadata"]
    if config["sasl_mechanism"] == "AWS_MSK_IAM":
        assert (meta["sasl"], meta["saslTokenProvider"], meta["awsRegion"]) == (
            "oauthbearer",
            "aws_msk_iam",
            "eu-west-1",
        )
        assert meta["tls"] == "enable"
    else:
        assert meta["sasl"] == config["sasl_mechanism"].lower()


def test_keda_falls_back_to_the_replica_ceiling_when_it_cannot_read_the_lag() -> None:
    so = one(render({"autoscaling": {"mode": "keda", "maxReplicas": 30}, "kafka": {"partitions": 12}}), "ScaledObject")
    assert (
        so["spec"]["fallback"]
        == {"failureThreshold": 3, "replicas": so["spec"]["maxReplicaCount"]}
        == {
            "failureThreshold": 3,
            "replicas": 12,
        }
    )
    ci = load_values(CHART / "ci" / "keda-sasl-values.yaml")
    assert (
        one(render(ci), "ScaledObject")["spec"]["fallback"]["replicas"]
        == ci["autoscaling"]["keda"]["fallback"]["replicas"]
    )
    off = render({"autoscaling": {"mode": "keda", "keda": {"fallback": {"enabled": False}}}})
    assert "fallback" not in one(off, "ScaledObject")["spec"]


# ---------------------------------------------------------------------------- HPA -> KEDA in one upgrade
@pytest.mark.parametrize("release", ["dangerclip", "moderation"])
def test_switching_from_hpa_to_keda_takes_the_hpa_over(release: str) -> None:
    """Helm creates the ScaledObject while the previous revision's HPA still exists; KEDA's webhook admits it
    only when it asks to take over that very HPA: the transfer annotation and the HPA's name."""
    hpa = one(render({"autoscaling": {"mode": "hpa"}}, release=release), "HorizontalPodAutoscaler")
    keda_docs = render({"autoscaling": {"mode": "keda"}}, release=release)
    so = one(keda_docs, "ScaledObject")
    assert so["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == hpa["metadata"]["name"]
    assert so["metadata"]["namespace"] == hpa["metadata"]["namespace"]
    assert so["spec"]["scaleTargetRef"] == {**hpa["spec"]["scaleTargetRef"]}
    assert "HorizontalPodAutoscaler" not in kinds(keda_docs), "KEDA owns the HPA from now on"
    assert "replicas" not in one(keda_docs, "Deployment")["spec"]


# ---------------------------------------------------------------------------- image volumes
@pytest.mark.parametrize(
    "kube_version, gate, ok",
    [
        ("1.35.0", False, True),
        ("1.36.0", False, True),
        ("1.33.0", False, False),
        ("1.33.0", True, True),
        ("1.30.0", True, False),
    ],
)
def test_image_volume_model_only_where_the_cluster_mounts_it(kube_version: str, gate: bool, ok: bool) -> None:
    """ImageVolume is on by default from Kubernetes 1.35; on 1.31-1.34 only behind a feature gate the user
    says is on; never before 1.31."""
    values = load_values(CHART / "ci" / "model-image-values.yaml")
    values["model"]["image"]["featureGateEnabled"] = gate
    if ok:
        vols = one(render(values, kube_version=kube_version), "Deployment")["spec"]["template"]["spec"]["volumes"]
        assert {v["name"]: v for v in vols}["model"]["image"]["reference"] == values["model"]["image"]["reference"]
    else:
        with pytest.raises(helm().HelmRenderError, match="model.source=image needs") as err:
            render(values, kube_version=kube_version)
        assert ("featureGateEnabled" in str(err.value)) == (not gate)


def test_pvc_and_init_container_models_render_on_the_oldest_supported_cluster() -> None:
    for name in ("gpu-pvc-values.yaml", "model-init-values.yaml"):
        assert one(render(load_values(Path(CHART / "ci" / name)), kube_version="1.27.0"), "Deployment")
