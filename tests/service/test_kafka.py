"""Workers as real subprocesses against a real tansu broker, with the real tiny ONNX model."""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict

import jsonschema
import pytest

from dangerclip_cli.embedded import EmbeddedBroker
from service.messages import DeadLetter, ScoreResult, json_schemas
from tests.support.service import (
    ENVELOPE,
    WorkerProcess,
    collect,
    delivery_receipts,
    jpeg_bytes,
    make_topics,
    poison_corpus,
    produce,
    read_all,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _ids(results: list) -> list[str]:
    return [json.loads(r.value)["id"] for r in results]


def test_round_trip_in_partition_order_then_clean_shutdown(broker, topics, model_path, workers, tmp_path):
    w = WorkerProcess(
        broker.bootstrap_servers, topics, model_path, tmp_path, max_batch_size="8", debug="service.delivery.receipts"
    )
    workers.append(w)
    w.wait_ready()
    n = 32
    records, parts = [], {}
    for i in range(n):
        key = f"img-{i:03d}".encode()
        parts[key] = i % 4
        if i % 3 == 0:  # every third one as a JSON envelope with metadata and a trace header
            doc = {"id": f"env-{i:03d}", "image_b64": base64.b64encode(jpeg_bytes(i)).decode(), "metadata": {"n": i}}
            records.append((key, json.dumps(doc).encode(), ENVELOPE + [("traceparent", key)]))
        else:
            records.append((key, jpeg_bytes(i), [("traceparent", key)]))
    produce(broker.bootstrap_servers, topics.input, records, partition_of=parts)
    out = collect(broker.bootstrap_servers, [topics.output, topics.dead_letter], n, timeout_s=90)
    assert len(out) == n, w.log()[-3000:]
    assert all(r.topic == topics.output for r in out)
    schema = json_schemas()["result"]
    by_part = defaultdict(list)
    for r in out:
        doc = json.loads(r.value)
        jsonschema.validate(doc, schema)
        res = ScoreResult.model_validate(doc)
        # same key, trace header passed through, result on the input's partition number
        assert r.key == f"img-{int(res.id[-3:]):03d}".encode()
        assert ("traceparent", r.key) in r.headers
        assert r.partition == res.source.partition == parts[r.key]
        if res.id.startswith("env-"):
            assert res.metadata == {"n": int(res.id[-3:])}
        assert res.model.trained is False and set(res.scores) == set(res.flagged)
        by_part[r.partition].append(res.source.offset)
    assert sorted(_ids(out)) == sorted(f"env-{i:03d}" if i % 3 == 0 else f"img-{i:03d}" for i in range(n))
    for p, offsets in by_part.items():
        assert offsets == sorted(offsets), f"partition {p} out of order: {offsets}"
    # the delivery receipts (DANGERCLIP_DEBUG) say truly where the broker put each input's outcome
    receipts = set(delivery_receipts(w.log()))
    where = {
        ((res.source.topic, res.source.partition, res.source.offset), (r.topic, r.partition, r.offset))
        for r in out
        for res in [ScoreResult.model_validate(json.loads(r.value))]
    }
    assert receipts == where, sorted(receipts ^ where)[:6]

    # the offsets were committed: lag drops to zero on every partition
    def lag_gauges() -> list[float] | None:
        # Gauges refresh once a second, partition by partition: wait until all four read zero.
        gauges = [v for k, v in w.metrics().items() if k.startswith("dangerclip_consumer_lag_records")]
        return gauges if len(gauges) == 4 and all(v == 0 for v in gauges) else None

    lag = wait_for(lag_gauges, 10)
    assert lag == [0.0, 0.0, 0.0, 0.0], w.metrics()
    assert w.get("/healthz")[0] == 200
    assert w.terminate() == 0
    assert "worker stopped" in w.log()


def test_poison_corpus_is_dead_lettered_and_metrics_count_it(
    broker, topics, model_path, workers, tmp_path, image_server
):
    max_bytes = 200_000
    w = WorkerProcess(
        broker.bootstrap_servers,
        topics,
        model_path,
        tmp_path,
        max_bytes=str(max_bytes),
        max_pixels="10000000",
        uri_fetch_enabled="true",
        uri_allowed_hosts=f"127.0.0.1:{image_server.port}",
    )
    workers.append(w)
    corpus = poison_corpus(image_server.url, max_bytes)
    good = [(f"good-{i}".encode(), jpeg_bytes(100 + i), []) for i in range(len(corpus))]
    good.append((b"good-uri", json.dumps({"id": "good-uri", "uri": image_server.url + "/good.jpg"}).encode(), ENVELOPE))
    mixed = []
    for i, p in enumerate(corpus):  # interleave good and bad in the same batches
        mixed += [(p.key, p.value, p.headers), good[i]]
    mixed.append(good[-1])
    w.wait_ready()
    produce(broker.bootstrap_servers, topics.input, mixed)
    out = collect(broker.bootstrap_servers, [topics.output, topics.dead_letter], len(mixed), timeout_s=90, settle_s=1.0)
    assert len(out) == len(mixed), w.log()[-3000:]
    results = [r for r in out if r.topic == topics.output]
    dead = {r.key: DeadLetter.model_validate_json(r.value) for r in out if r.topic == topics.dead_letter}
    assert sorted(_ids(results)) == sorted(k.decode() for k, _, _ in good)
    for p in corpus:
        assert p.key in dead, p.name
        assert dead[p.key].reason == p.reason, (p.name, dead[p.key].message)
        assert dead[p.key].original_value() == p.value
    assert w.proc.poll() is None, "the worker must survive poison"
    assert w.get("/readyz")[0] == 200
    # /metrics over HTTP counts exactly what happened (accounting follows the flush, so wait for it)
    want = Counter(p.reason for p in corpus)

    def counted():
        m = w.metrics()
        got = {r: m.get(f'dangerclip_dead_letters_total{{reason="{r}",topic="{topics.dead_letter}"}}', 0) for r in want}
        ok = (
            got == want
            and m.get(f'dangerclip_results_produced_total{{topic="{topics.output}"}}') == len(good)
            and m.get(f'dangerclip_records_consumed_total{{topic="{topics.input}"}}') == len(mixed)
        )
        return m if ok else None

    m = wait_for(counted, 10)
    assert m, w.metrics()
    assert m["dangerclip_batch_size_records_sum"] == len(good)
    assert m["dangerclip_decode_duration_seconds_count"] == len(good)
    assert m['dangerclip_score_count{category="weapon"}'] == len(good)
    assert m["dangerclip_end_to_end_duration_seconds_count"] == len(mixed)
    assert m["dangerclip_assigned_partitions"] == 4 and m["dangerclip_ready"] == 1
    assert [k for k in m if k.startswith("dangerclip_model_info{")][0].count('trained="false"') == 1
    assert w.terminate() == 0


def test_kill_9_mid_stream_loses_nothing(broker, topics, model_path, workers, tmp_path):
    n = 520
    records = [(f"c-{i:04d}".encode(), jpeg_bytes(i % 50, (48, 40)), []) for i in range(n)]
    a = WorkerProcess(broker.bootstrap_servers, topics, model_path, tmp_path, name="a", max_batch_size="16")
    workers.append(a)
    a.wait_ready()
    produce(broker.bootstrap_servers, topics.input, records)
    # kill -9 once it has produced part of the stream
    assert wait_for(
        lambda: a.metrics().get(f'dangerclip_results_produced_total{{topic="{topics.output}"}}', 0) >= 100, 60
    ), a.log()[-2000:]
    a.kill()
    done_before = len(read_all(broker.bootstrap_servers, topics.output))
    assert done_before < n, "the worker finished before it could be killed; make the stream longer"
    b = WorkerProcess(broker.bootstrap_servers, topics, model_path, tmp_path, name="b", max_batch_size="16")
    workers.append(b)
    want = {k.decode() for k, _, _ in records}

    def all_there():
        got = read_all(broker.bootstrap_servers, topics.output)
        return got if want <= set(_ids(got)) else None

    out = wait_for(all_there, 120, interval_s=1.0)
    assert out, b.log()[-3000:]
    ids = Counter(_ids(out))
    assert set(ids) == want  # none missing, nothing unknown
    # duplicates only for what was in flight when the first worker died, and they carry the same id
    assert sum(ids.values()) - len(want) <= 2 * 16 + 16
    assert b.terminate() == 0


def test_broker_restart_between_batches(model_path, workers, tmp_path):
    b = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        topics = make_topics(b.bootstrap_servers)
        w = WorkerProcess(b.bootstrap_servers, topics, model_path, tmp_path)
        workers.append(w)
        w.wait_ready()
        first = [(f"r1-{i}".encode(), jpeg_bytes(i), []) for i in range(8)]
        produce(b.bootstrap_servers, topics.input, first)
        assert len(collect(b.bootstrap_servers, [topics.output], 8, timeout_s=60)) == 8
        assert wait_for(lambda: w.metrics().get('dangerclip_offset_commits_total{outcome="ok"}', 0) >= 1, 10)
        # the memory broker forgets everything: topics, offsets, the group
        b.restart(down_s=2.0)
        make_topics_again = lambda: __import__("service.topics", fromlist=["x"]).ensure_topics(  # noqa: E731
            b.bootstrap_servers, {topics.input: 4, topics.output: 4, topics.dead_letter: 1}
        )
        make_topics_again()
        assert w.proc.poll() is None, "the worker must not exit when the broker goes away"
        second = [(f"r2-{i}".encode(), jpeg_bytes(50 + i), []) for i in range(8)]
        produce(b.bootstrap_servers, topics.input, second)
        out = collect(b.bootstrap_servers, [topics.output], 8, timeout_s=90)
        # every new record is served; a batch caught by the restart may be produced twice (at-least-once)
        assert set(_ids(out)) == {k.decode() for k, _, _ in second}, w.log()[-4000:]
        assert w.proc.poll() is None
        assert w.terminate() == 0
    finally:
        b.stop()


def test_two_workers_share_four_partitions_without_duplicates(broker, topics, model_path, workers, tmp_path):
    a = WorkerProcess(broker.bootstrap_servers, topics, model_path, tmp_path, name="a")
    b = WorkerProcess(broker.bootstrap_servers, topics, model_path, tmp_path, name="b")
    workers += [a, b]
    a.wait_ready()
    b.wait_ready()

    def split():
        pa, pb = a.metrics().get("dangerclip_assigned_partitions"), b.metrics().get("dangerclip_assigned_partitions")
        return (pa, pb) if pa and pb and pa + pb == 4 else None

    assert wait_for(split, 30), (a.log()[-2000:], b.log()[-2000:])
    n = 160
    records = [(f"t-{i:04d}".encode(), jpeg_bytes(i % 40, (48, 40)), []) for i in range(n)]
    produce(broker.bootstrap_servers, topics.input, records)
    out = collect(broker.bootstrap_servers, [topics.output, topics.dead_letter], n, timeout_s=90, settle_s=2.0)
    ids = Counter(_ids(out))
    assert set(ids) == {k.decode() for k, _, _ in records}
    assert max(ids.values()) == 1, [k for k, v in ids.items() if v > 1]
    ca = a.metrics().get(f'dangerclip_results_produced_total{{topic="{topics.output}"}}', 0)
    cb = b.metrics().get(f'dangerclip_results_produced_total{{topic="{topics.output}"}}', 0)
    assert ca > 0 and cb > 0 and ca + cb == n
    assert a.terminate() == 0 and b.terminate() == 0


def test_worker_refuses_bad_settings(tmp_path, model_path):
    import subprocess
    import sys

    from tests.support.service import REPO

    env = {"DANGERCLIP_MAX_BATCH_SIZE": "0", "DANGERCLIP_MODEL_PATH": str(model_path), "PATH": "/usr/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        r.returncode == 2
        and "DANGERCLIP_MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')" in r.stderr
    ), r.stderr
    assert "Traceback" not in r.stderr and "pydantic.dev" not in r.stderr


def test_env_help_lists_every_setting():
    import subprocess
    import sys

    from service.settings import Settings
    from tests.support.service import REPO

    r = subprocess.run(
        [sys.executable, "-m", "dangerclip_cli", "serve", "--env-help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    for name in [*Settings.model_fields, "debug"]:
        assert f"DANGERCLIP_{name.upper()}" in r.stdout


def test_sigterm_exits_within_the_shutdown_bound_while_the_broker_hangs(model_path, workers, tmp_path):
    import os
    import signal
    import time

    b = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    assert b.proc is not None
    try:
        topics = make_topics(b.bootstrap_servers, partitions=1)
        w = WorkerProcess(
            b.bootstrap_servers,
            topics,
            model_path,
            tmp_path,
            max_batch_size="64",
            max_batch_wait_ms="3000",
            produce_timeout_s="30",
            shutdown_timeout_s="4",
        )
        workers.append(w)
        w.wait_ready()
        produce(b.bootstrap_servers, topics.input, [(f"s-{i}".encode(), jpeg_bytes(i), []) for i in range(6)])
        consumed = f'dangerclip_records_consumed_total{{topic="{topics.input}"}}'
        assert wait_for(lambda: w.metrics().get(consumed), 20)
        os.kill(b.proc.pid, signal.SIGSTOP)  # the broker stops answering: the batch's produce hangs
        time.sleep(4)
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(30)
        took = time.monotonic() - t0
        assert took < 4 + 3, f"exit took {took:.1f}s:\n{w.log()[-3000:]}"
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()


def test_a_setting_the_client_refuses_is_fatal_at_start_not_retried(tmp_path, model_path):
    import subprocess
    import sys

    from tests.support.service import REPO

    env = {
        "DANGERCLIP_MODEL_PATH": str(model_path),
        "PATH": "/usr/bin",
        "DANGERCLIP_METRICS_PORT": "0",
        "DANGERCLIP_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "DANGERCLIP_PRODUCER_OPTIONS": '{"no_such_option": 1}',
    }
    r = subprocess.run(
        [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "no_such_option" in r.stderr, r.stderr[-2000:]
