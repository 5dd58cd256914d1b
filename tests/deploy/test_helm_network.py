"""The NetworkPolicy allows exactly what each enabled feature needs, read the way a CNI reads it: a small
evaluator of the rendered policy answers "may a worker pod reach this address and port?" and "may this pod
scrape it?", for each feature on and off."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.support.deploy import CHART, kinds, load_values, one, render

# Addresses a URI in an envelope might point at. Public ones are fine (the worker's allow-list picks hosts);
# the rest are the node's credentials or the cluster's insides.
PUBLIC = ["93.184.216.34", "151.101.1.69", "2606:2800:220:1:248:1893:25c8:1946"]
FORBIDDEN = {
    "cloud metadata (AWS, GCP, Azure)": "169.254.169.254",
    "EKS Pod Identity agent": "169.254.170.23",
    "AWS metadata over IPv6": "fd00:ec2::254",
    "a pod or service (10/8)": "10.96.0.1",
    "a node (192.168/16)": "192.168.1.10",
    "a private network (172.16/12)": "172.20.0.5",
    "CGNAT pod ranges": "100.64.3.2",
    "loopback": "127.0.0.1",
}


def _policy(values: dict[str, Any]) -> dict[str, Any]:
    return one(render({"networkPolicy": {"enabled": True}} | values), "NetworkPolicy")["spec"]


def _ip_in_peer(peer: dict[str, Any], ip: str) -> bool:
    """Whether an address outside the cluster matches a peer (pod/namespace selectors match only pods)."""
    block = peer.get("ipBlock")
    if block is None:
        return False
    addr = ipaddress.ip_address(ip)
    cidr = ipaddress.ip_network(block["cidr"])
    if addr.version != cidr.version or addr not in cidr:
        return False
    return not any(
        addr in ipaddress.ip_network(e)
        for e in block.get("except", [])
        if ipaddress.ip_network(e).version == addr.version
    )


def egress_allows(spec: dict[str, Any], ip: str, port: int, protocol: str = "TCP") -> bool:
    """NetworkPolicy semantics: a rule allows the traffic when its ports match (no ports: any) and one of its
    peers matches (no ``to``: any destination)."""
    for rule in spec.get("egress", []):
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        peers = rule.get("to")
        if not peers or any(_ip_in_peer(peer, ip) for peer in peers):
            return True
    return False


def ingress_peers(spec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The peers allowed to reach the metrics port (None: anyone)."""
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    return rule.get("from")


def _selects(peer: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    sel = peer.get("podSelector")
    return sel is not None and "namespaceSelector" not in peer and sel["matchLabels"].items() <= pod_labels.items()


# ---------------------------------------------------------------------------- the baseline
def test_without_features_only_dns_and_the_brokers() -> None:
    spec = _policy({})
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert egress_allows(spec, "10.96.0.10", 53, "UDP") and egress_allows(spec, "10.96.0.10", 53, "TCP")
    assert egress_allows(spec, "10.20.0.7", 9092)
    for ip in [*PUBLIC, *FORBIDDEN.values()]:
        for port in (80, 443):
            assert not egress_allows(spec, ip, port), f"{ip}:{port} open with no feature that needs it"
    assert ingress_peers(spec) is None, "metricsFrom empty: any scraper"
    assert "NetworkPolicy" not in kinds(render())


# ---------------------------------------------------------------------------- URI fetching
def test_uri_fetch_reaches_the_internet_but_never_metadata_or_the_cluster() -> None:
    spec = _policy(load_values(CHART / "ci" / "networkpolicy-uri-values.yaml"))
    for ip in PUBLIC:
        assert egress_allows(spec, ip, 443) and egress_allows(spec, ip, 80), ip
        assert not egress_allows(spec, ip, 8080), "only HTTP(S)"
    for what, ip in FORBIDDEN.items():
        for port in (80, 443):
            assert not egress_allows(spec, ip, port), f"URI fetching reaches {what} ({ip}:{port})"
    assert egress_allows(spec, "10.20.0.7", 9092) is False, "brokers only in kafkaTo's namespace"


# ---------------------------------------------------------------------------- the model download
def test_init_container_download_gets_https_out_and_nothing_else() -> None:
    values = load_values(CHART / "ci" / "model-init-values.yaml")
    spec = _policy(values)
    assert values["model"]["source"] == "initContainer" and not values.get("config", {}).get("uri_fetch_enabled")
    for ip in PUBLIC:
        assert egress_allows(spec, ip, 443), f"the model download cannot reach {ip}:443"
        assert not egress_allows(spec, ip, 80)
    for what, ip in FORBIDDEN.items():
        assert not egress_allows(spec, ip, 443), f"the model download rule reaches {what}"
    baked = _policy({})
    assert not any(egress_allows(baked, ip, 443) for ip in PUBLIC), "no download, no HTTPS"
    # An in-cluster object store is named explicitly.
    minio = {"podSelector": {"matchLabels": {"app": "minio"}}}
    spec = _policy(
        values | {"networkPolicy": {"enabled": True, "modelDownloadTo": [minio], "modelDownloadPorts": [9000]}}
    )
    (rule,) = [r for r in spec["egress"] if r.get("to") == [minio]]
    assert rule["ports"] == [{"port": 9000, "protocol": "TCP"}]
    assert not any(egress_allows(spec, ip, 443) for ip in PUBLIC)


# ---------------------------------------------------------------------------- AWS MSK IAM
def test_msk_iam_gets_https_to_sts_outside_the_cluster() -> None:
    spec = _policy({"config": {"security_protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM"}})
    assert egress_allows(spec, PUBLIC[0], 443)
    assert not egress_allows(spec, FORBIDDEN["cloud metadata (AWS, GCP, Azure)"], 443)


# ---------------------------------------------------------------------------- scraping and helm test
def test_metrics_from_keeps_the_helm_test_pod_in() -> None:
    docs = render(load_values(CHART / "ci" / "networkpolicy-uri-values.yaml"))
    spec = one(docs, "NetworkPolicy")["spec"]
    peers = ingress_peers(spec)
    assert peers, "metricsFrom restricts who scrapes"
    test_pod = one(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert any(_selects(p, test_pod["metadata"]["labels"]) for p in peers), "helm test cannot reach the workers"
    worker = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not any(_selects(p, worker) for p in peers), "the test pod's peer must not select every worker pod"
    other_release = dict(test_pod["metadata"]["labels"], **{"app.kubernetes.io/instance": "another"})
    assert not any(_selects(p, other_release) for p in peers)


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "fc00::/7", "169.254.0.0/16"])
def test_excluded_ranges_are_configurable(cidr: str) -> None:
    values = {"config": {"uri_fetch_enabled": True, "uri_allowed_hosts": ["images.example.com"]}}
    default = _policy(values)
    blocks = [p["ipBlock"] for r in default["egress"] for p in r.get("to", []) if "ipBlock" in p]
    assert any(cidr in b["except"] for b in blocks)
    inside = str(next(ipaddress.ip_network(cidr).hosts()))
    assert not egress_allows(default, inside, 443)
    opened = _policy(values | {"networkPolicy": {"enabled": True, "excludedCIDRs": ["169.254.169.254/32"]}})
    if cidr != "169.254.0.0/16":
        assert egress_allows(opened, inside, 443), "a range left out of excludedCIDRs is reachable"
    assert not egress_allows(opened, "169.254.169.254", 443)
