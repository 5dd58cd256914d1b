"""``dangerclip doctor`` against real parts: a tansu broker, real topics, a real exported model, a running
worker. Only the topic-config checks use a fake admin client (tansu does not report topic configs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dangerclip_cli.embedded import free_port
from service.doctor import Doctor, _flatten_configs
from service.settings import Settings
from tests.support.service import REPO, WorkerProcess, jpeg_bytes, make_topics, produce

DEMO = REPO / "dangerclip" / "assets" / "demo"


def _doctor(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dangerclip_cli", "doctor", "--metrics-port", "0", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(bootstrap: str, topics) -> dict[str, str]:
    return {
        "DANGERCLIP_BOOTSTRAP_SERVERS": bootstrap,
        "DANGERCLIP_INPUT_TOPIC": topics.input,
        "DANGERCLIP_OUTPUT_TOPIC": topics.output,
        "DANGERCLIP_DEAD_LETTER_TOPIC": topics.dead_letter,
        "DANGERCLIP_GROUP_ID": topics.group,
        "DANGERCLIP_MODEL_PATH": str(DEMO / "model.onnx"),
    }


def _checks(stdout: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(stdout)["checks"]}


@pytest.mark.slow
def test_a_healthy_setting_passes_and_lag_is_what_waits(broker):
    topics = make_topics(broker.bootstrap_servers, partitions=3)
    produce(broker.bootstrap_servers, topics.input, [(None, jpeg_bytes(i), []) for i in range(7)])
    r = _doctor(_env(broker.bootstrap_servers, topics), "--json")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    checks = _checks(r.stdout)
    assert {c["status"] for c in checks.values()} <= {"ok", "skip"}, checks
    assert checks["model"]["data"]["provider"] == "CPUExecutionProvider"
    assert checks["inference"]["data"]["median_ms"] > 0
    assert checks[f"topic {topics.input}"]["data"]["partitions"] == 3
    assert checks["result order"]["status"] == "ok"
    lag = checks["consumer group"]["data"]["lag"]
    assert sum(lag.values()) == 7 and len(lag) == 3  # from the fetch's high watermark, as the worker measures it
    # The text report says the same, one line a check.
    text = _doctor(_env(broker.bootstrap_servers, topics), "--no-inference").stdout
    assert "✓ consumer group" in text and "lag 7 over 3 partitions" in text and "0 failed" in text


@pytest.mark.slow
def test_missing_topics_fewer_result_partitions_and_a_wrong_model_are_named_with_the_fix(broker, tmp_path):
    topics = make_topics(broker.bootstrap_servers, partitions=4)
    env = {
        **_env(broker.bootstrap_servers, topics),
        "DANGERCLIP_DEAD_LETTER_TOPIC": f"missing-{topics.group}",
        "DANGERCLIP_MODEL_PATH": str(DEMO / "model.safetensors"),
    }
    r = _doctor(env, "--json")
    assert r.returncode == 1
    checks = _checks(r.stdout)
    dlq = checks[f"topic missing-{topics.group}"]
    assert dlq["status"] == "fail" and "create it" in dlq["fix"]
    assert checks["model"]["status"] == "fail" and "dangerclip export" in checks["model"]["fix"]
    # A doctor run changes nothing: the missing topic is still missing.
    again = _checks(_doctor(env, "--json", "--no-inference").stdout)
    assert again[f"topic missing-{topics.group}"]["status"] == "fail"

    out = make_topics(broker.bootstrap_servers, partitions=2)
    env = {**_env(broker.bootstrap_servers, topics), "DANGERCLIP_OUTPUT_TOPIC": out.output}
    order = _checks(_doctor(env, "--json", "--no-inference").stdout)["result order"]
    assert order["status"] == "warn" and "4 input partitions onto 2" in order["detail"]


def test_unreachable_brokers_and_bad_settings_fail_fast_with_what_to_do():
    t0 = time.monotonic()
    r = _doctor({"DANGERCLIP_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}, "--timeout", "2", "--no-inference")
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert "✗ brokers" in r.stdout and "DANGERCLIP_BOOTSTRAP_SERVERS" in r.stdout
    assert "Traceback" not in r.stderr and "ECONNREFUSED" not in r.stderr  # the clients' own logs stay quiet
    r = _doctor({"DANGERCLIP_MAX_BATCH_SIZE": "abc"}, "--json")
    assert r.returncode == 1
    (settings,) = json.loads(r.stdout)["checks"]
    assert settings["status"] == "fail" and settings["detail"].startswith("DANGERCLIP_MAX_BATCH_SIZE: ")


@pytest.mark.slow
def test_a_running_worker_is_checked_through_its_health_server(broker, tmp_path, workers):
    topics = make_topics(broker.bootstrap_servers)
    w = WorkerProcess(broker.bootstrap_servers, topics, DEMO / "model.onnx", tmp_path)
    workers.append(w)
    w.wait_ready()
    checks = _checks(_doctor(_env(broker.bootstrap_servers, topics), "--json", "--worker-url", w.url).stdout)
    assert checks["worker"]["status"] == "ok"
    w.stop()
    checks = _checks(_doctor(_env(broker.bootstrap_servers, topics), "--json", "--worker-url", w.url).stdout)
    assert checks["worker"]["status"] == "fail"


class _Admin:
    """The part of KafkaAdminClient the topic checks call, answering like a Kafka broker that reports configs."""

    def __init__(self, configs: dict[str, dict[str, str]], partitions: dict[str, int]) -> None:
        self.configs, self.partitions = configs, partitions

    def describe_topics(self, names):
        return [
            {"name": n, "error_code": 0, "partitions": [{"partition_index": i, "leader_id": 1} for i in range(p)]}
            for n, p in self.partitions.items()
            if n in names
        ]

    def describe_configs(self, resources, config_filter="all"):
        return {"topic": {r.name: {k: {"value": v} for k, v in self.configs[r.name].items()} for r in resources}}


def test_topic_limits_below_the_workers_are_flagged(tmp_path: Path):
    s = Settings(_env_file=None, max_message_bytes=2_000_000)
    d = Doctor(s)
    d._admin = _Admin(
        {
            s.input_topic: {"retention.ms": str(3600 * 1000), "max.message.bytes": "1048588"},
            s.output_topic: {"retention.ms": "-1", "max.message.bytes": "1048588"},
            s.dead_letter_topic: {"retention.ms": str(7 * 86400 * 1000), "max.message.bytes": "4000000"},
        },
        {s.input_topic: 3, s.output_topic: 3, s.dead_letter_topic: 1},
    )
    d._check_topics()
    by = {c.name: c for c in d.checks}
    assert by[f"topic {s.input_topic}"].status == "warn" and "a day or more" in by[f"topic {s.input_topic}"].fix
    assert by[f"topic {s.output_topic}"].status == "warn" and "2000000" in by[f"topic {s.output_topic}"].fix
    assert by[f"topic {s.dead_letter_topic}"].status == "ok"
    assert _flatten_configs({"topic": {"t": {"retention.ms": {"value": 5}}}}) == {"t": {"retention.ms": "5"}}


def test_the_index_check_names_an_embedder_that_is_missing_or_not_the_index_one(tmp_path: Path):
    pytest.importorskip("pdqhash")
    import numpy as np
    from PIL import Image

    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index import IndexWriter
    from dangerclip.runtime.index.store import embedder_identity, entry_for_image
    from tests.support.models import export_embedder

    e1 = export_embedder(tmp_path / "a.onnx", version="1")
    e2 = export_embedder(tmp_path / "b.onnx", version="2")  # same weights, another version: another identity
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    emb = Embedder(e1)
    IndexWriter(tmp_path / "idx").write([entry_for_image(img, id="x")], emb.embed([img]), embedder_identity(emb.card))

    def index_check(**kw: object):
        d = Doctor(Settings(_env_file=None, index_path=tmp_path / "idx", **kw))
        d._check_index()
        return d.checks[-1]

    assert index_check(embedder_path=e1).status == "ok"
    c = index_check()
    assert c.status == "warn" and "test-embedder@1" in c.detail and "DANGERCLIP_EMBEDDER_PATH" in c.fix
    c = index_check(embedder_path=e2)
    assert c.status == "fail" and "test-embedder@2" in c.detail and "rebuild" in c.fix
    d = Doctor(Settings(_env_file=None, index_path=tmp_path / "nowhere"))
    d._check_index()
    assert d.checks[-1].status == "fail" and "dangerclip index build" in d.checks[-1].fix
