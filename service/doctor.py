"""``dangerclip doctor``: check a worker's whole setting before (or while) it runs, and say what to fix.

What ``kcat -L`` and ``kafka-topics --describe`` give Kafka users, for this worker: the settings, the model file
(kind, card, execution providers available and chosen, a test inference with its time), the brokers, the three
topics (exist, partitions, whether results keep the input's partition order, retention and the largest message
against the worker's limits), the consumer group (state, members, lag per partition), ACLs where the broker
tells, and the metrics port (free for a worker, or a running worker's health). Each check is ✓, ! (works, but
look), ✗ (will not work) or - (not checked, and why); the exit code is 1 when any is ✗. ``--json`` prints the
same as one JSON document for automation (the Helm chart's test hook and the compose stack run it).

It reads what the worker reads (the same ``Settings``) and never writes to the cluster: no topic is created, no
offset committed, no group joined.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dangerclip.runtime.errors import describe_error, user_message

Status = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
MIN_INPUT_RETENTION_MS = 24 * 3600 * 1000
"""Input retention below a day is flagged: a worker down over a weekend night would lose inputs."""


@dataclass
class Check:
    """One line of the report.

    Attributes:
        name: what was checked (``model``, ``topic dangerclip.images``, ...).
        status: ``ok``, ``warn``, ``fail`` or ``skip``.
        detail: what was found.
        fix: what to do (for ``warn`` and ``fail``).
        data: figures for ``--json`` (partitions, lag, timings, ...).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Doctor:
    """Runs the checks in order; later checks are skipped, with the reason, when what they need failed.

    Args:
        settings: the worker's settings (``None`` with ``settings_error`` when they did not load).
        settings_error: why the settings did not load.
        timeout_s: bound on each network step.
        infer: run a test inference on the model.
        model: check the model file (off where the doctor runs beside, not inside, the worker's pod: the running
            worker's ``/metrics`` then stands for it).
        worker_url: base URL of a running worker's health server; checks ``/healthz``, ``/readyz``, ``/metrics``.
    """

    def __init__(
        self,
        settings: Any,
        settings_error: BaseException | None = None,
        timeout_s: float = 10.0,
        infer: bool = True,
        worker_url: str | None = None,
        model: bool = True,
    ) -> None:
        self.settings = settings
        self.settings_error = settings_error
        self.timeout_s = timeout_s
        self.infer = infer
        self.worker_url = worker_url
        self.model = model
        self.checks: list[Check] = []
        self._admin: Any = None
        self._topics: dict[str, int] = {}

    def add(self, name: str, status: Status, detail: str, fix: str = "", **data: Any) -> Check:
        c = Check(name, status, detail, fix, data)
        self.checks.append(c)
        return c

    def run(self) -> list[Check]:
        if not self._check_settings():
            return self.checks
        if self.model:
            self._check_model()
        else:
            self.add(
                "model",
                "skip",
                "--no-model" + (f": the worker at {self.worker_url} reports it" if self.worker_url else ""),
            )
        self._check_metrics()
        if self._check_brokers():
            try:
                self._check_topics()
                self._check_group()
                self._check_acls()
            finally:
                self._admin.close()
        return self.checks

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    # ------------------------------------------------------------------ settings and model
    def _check_settings(self) -> bool:
        if self.settings is None:
            self.add(
                "settings",
                "fail",
                user_message(self.settings_error or ValueError("no settings"), env_prefix="DANGERCLIP_"),
                "fix the variable named above ('dangerclip serve --env-help' lists them all)",
            )
            return False
        s = self.settings
        self.add(
            "settings",
            "ok",
            f"bootstrap {s.bootstrap_servers} ({s.security_protocol}), group {s.group_id}, "
            f"topics {s.input_topic} → {s.output_topic} / {s.dead_letter_topic}",
        )
        return True

    def _check_model(self) -> None:
        from dangerclip.runtime.filekind import KINDS, kind_of

        s = self.settings
        if s.model_path is None:
            self.add("model", "fail", "no model path", "set DANGERCLIP_MODEL_PATH or pass --model")
            return
        kind = kind_of(s.model_path)
        if kind not in ("onnx", "dangerclip-onnx"):
            fix = (
                f"export it: dangerclip export {s.model_path} --out model.onnx"
                if kind == "checkpoint"
                else "point DANGERCLIP_MODEL_PATH at an exported DangerCLIP .onnx file"
            )
            what = "does not exist" if kind == "missing" else f"is {KINDS.get(kind, kind)}"
            self.add("model", "fail", f"{s.model_path} {what}, not an ONNX model", fix, kind=kind)
            return
        try:
            import onnxruntime as ort

            from dangerclip.runtime.scorer import DangerScorer

            scorer = DangerScorer(
                s.model_path, providers=s.provider_list, intra_op_threads=s.intra_op_threads, thresholds=s.thresholds
            )
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add("model", "fail", f"{s.model_path} does not load: {user_message(e)}", "re-export the model")
            return
        card = scorer.card
        available = list(ort.get_available_providers())
        detail = (
            f"{card.name} {card.version} ({card.mode}{'' if card.trained else ', UNTRAINED head'}), "
            f"categories {card.categories}, input {card.preprocess.image_size}px, on {scorer.provider}"
        )
        data = {"card": card.to_dict(), "provider": scorer.provider, "available_providers": available}
        self.add(
            "model",
            "ok" if card.trained or card.mode != "trained" else "warn",
            detail,
            "" if card.trained or card.mode != "trained" else "train a head (dangerclip train): scores mean nothing",
            **data,
        )
        wanted = s.provider_list
        gpu_asked = wanted not in ("auto", None) and scorer.provider == "CPUExecutionProvider" and wanted != "cpu"
        self.add(
            "providers",
            "warn" if gpu_asked else "ok",
            f"chosen {scorer.provider}; this onnxruntime has {', '.join(available)}",
            "install onnxruntime-gpu and the CUDA libraries, or use the GPU image" if gpu_asked else "",
        )
        if self.infer:
            self._check_inference(scorer)
        self._check_type_head()
        self._check_index()

    def _check_index(self) -> None:
        s = self.settings
        if s.index_path is None:
            self.add("index", "skip", "not configured (DANGERCLIP_INDEX_PATH): flagged images get no matches")
            return
        try:
            from dangerclip.runtime.embedder import Embedder
            from dangerclip.runtime.index import IndexReader

            embedder = Embedder(s.embedder_path) if s.embedder_path is not None else None
            reader = IndexReader(s.index_path, embedder=embedder, qdrant=s.index_qdrant)
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add(
                "index",
                "fail",
                f"{s.index_path}: {user_message(e)}",
                "build one with dangerclip index build [--embedder], or unset DANGERCLIP_INDEX_PATH",
            )
            return
        st = reader.stats()
        held = st.get("embedder")
        summary = f"{st['entries']} entries, generation {st.get('generation')}, signals {', '.join(st['signals'])}"
        if held is not None and embedder is None:
            self.add(
                "index",
                "warn",
                f"{summary}: the embeddings from {held['name']}@{held['version']} are not searched",
                "set DANGERCLIP_EMBEDDER_PATH to that embedder's .onnx",
            )
        elif held is not None and embedder is not None and not reader.searches_embeddings:
            self.add(
                "index",
                "fail",
                f"{summary}: built with {held['name']}@{held['version']}, but the embedder is "
                f"{embedder.card.name}@{embedder.card.version}",
                "point DANGERCLIP_EMBEDDER_PATH at the embedder the index was built with, or rebuild the index",
            )
        else:
            self.add("index", "ok", summary, entries=st["entries"])

    def _check_type_head(self) -> None:
        s = self.settings
        if s.type_head_path is None:
            self.add("type head", "skip", "not configured (DANGERCLIP_TYPE_HEAD_PATH): flagged images get no type")
            return
        try:
            from dangerclip.runtime.typehead import TypeHead

            head = TypeHead(s.type_head_path, top_k=s.type_head_top_k)
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add(
                "type head",
                "fail",
                f"{s.type_head_path}: {user_message(e)}",
                "export one with dangerclip types train, or unset DANGERCLIP_TYPE_HEAD_PATH",
            )
            return
        c = head.card
        self.add(
            "type head",
            "ok",
            f"{c.name} {c.version}: {len(c.classes)} types ({len(c.look_alike)} look-alike), {c.image_size}px, "
            f"confidence high ≥ {c.confidence.get('high')}, medium ≥ {c.confidence.get('medium')}",
            classes=c.classes,
        )

    def _check_inference(self, scorer: Any) -> None:
        import numpy as np
        from PIL import Image

        img = Image.fromarray(np.full((scorer.card.preprocess.image_size,) * 2 + (3,), 127, np.uint8))
        times = []
        try:
            for _ in range(3):
                t0 = time.perf_counter()
                preds = scorer.score_images([img], batch_size=1)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add("inference", "fail", f"a test image does not score: {user_message(e)}", "re-export the model")
            return
        scores = preds[0].scores
        finite = all(np.isfinite(v) for v in scores.values())
        ms = sorted(times)[1] * 1000
        self.add(
            "inference",
            "ok" if finite else "fail",
            f"a grey test image scores in {ms:.0f} ms (median of 3, batch 1): {scores}",
            "" if finite else "the model gives non-finite scores: re-export it",
            median_ms=round(ms, 2),
        )

    # ------------------------------------------------------------------ metrics port
    def _check_metrics(self) -> None:
        s = self.settings
        if self.worker_url:
            self._check_worker(self.worker_url.rstrip("/"))
            return
        if s.metrics_port == 0:
            self.add("metrics port", "ok", "0: the worker picks a free port")
            return
        with socket.socket() as sock:
            try:
                sock.bind((s.metrics_host, s.metrics_port))
            except OSError as e:
                self.add(
                    "metrics port",
                    "warn",
                    f"{s.metrics_host}:{s.metrics_port} is taken here ({e.strerror}): a worker already running?",
                    "check that worker with --worker-url http://HOST:PORT, or set DANGERCLIP_METRICS_PORT",
                )
                return
        self.add("metrics port", "ok", f"{s.metrics_host}:{s.metrics_port} is free for the worker")

    def _check_worker(self, base: str) -> None:
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=self.timeout_s) as r:
                    return r.status, r.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode("utf-8", "replace")

        try:
            health, ready, metrics = get("/healthz"), get("/readyz"), get("/metrics")
        except OSError as e:
            self.add("worker", "fail", f"{base} does not answer: {e}", "is the worker running and the port reachable?")
            return
        if health[0] != 200:
            self.add("worker", "fail", f"/healthz {health[0]}: {health[1].strip()}", "see the worker's log")
        elif ready[0] != 200:
            self.add(
                "worker", "warn", f"alive, not ready: {ready[1].strip()}", "the reason above says what it waits for"
            )
        elif "dangerclip_model_info" not in metrics[1]:
            self.add("worker", "fail", f"{base}/metrics has no dangerclip_model_info", "is this a DangerCLIP worker?")
        else:
            self.add("worker", "ok", f"{base}: alive, ready, metrics served")

    # ------------------------------------------------------------------ brokers, topics, group, ACLs
    def _client_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bootstrap_servers": s.bootstrap_list,
            "client_id": f"{s.client_id}-doctor",
            "request_timeout_ms": int(self.timeout_s * 1000),
            "bootstrap_timeout_ms": int(self.timeout_s * 1000),
            **s.kafka_security(),
        }

    def _check_brokers(self) -> bool:
        from kafka import KafkaAdminClient

        s = self.settings
        t0 = time.perf_counter()
        try:
            self._admin = KafkaAdminClient(**self._client_options())
            cluster = self._admin.describe_cluster()
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add(
                "brokers",
                "fail",
                f"cannot reach {s.bootstrap_servers} ({s.security_protocol}): {describe_error(e)}",
                "check DANGERCLIP_BOOTSTRAP_SERVERS, the security settings, and that the brokers are reachable "
                "from here (network policy, DNS, advertised listeners)",
            )
            if self._admin is not None:
                self._admin.close()
            return False
        brokers = cluster.get("brokers", [])
        self.add(
            "brokers",
            "ok",
            f"{len(brokers)} broker(s) answer at {s.bootstrap_servers} in {(time.perf_counter() - t0) * 1000:.0f} ms"
            f" (cluster {cluster.get('cluster_id')}, controller {cluster.get('controller_id')})",
            brokers=[f"{b['host']}:{b['port']}" for b in brokers],
        )
        return True

    def _check_topics(self) -> None:
        s = self.settings
        names = [s.input_topic, s.output_topic, s.dead_letter_topic]
        try:
            described = self._admin.describe_topics(names)
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add("topics", "fail", f"cannot describe topics: {type(e).__name__}: {e}", "check the ACLs")
            return
        found = {d["name"]: d for d in described if d.get("error_code", 0) == 0 and d.get("partitions")}
        configs = self._topic_configs([n for n in names if n in found])
        for role, name in zip(("input", "output", "dead-letter"), names, strict=True):
            if name not in found:
                self.add(
                    f"topic {name}",
                    "fail",
                    f"the {role} topic does not exist (or this principal may not describe it)",
                    f"create it: kafka-topics --create --topic {name} --partitions N (the worker never creates topics)",
                )
                continue
            parts = found[name]["partitions"]
            self._topics[name] = len(parts)
            offline = [p["partition_index"] for p in parts if p.get("leader_id", -1) < 0]
            cfg = configs.get(name, {})
            status: Status = "fail" if offline else "ok"
            notes, fixes = [f"{len(parts)} partitions"], []
            if offline:
                notes.append(f"partitions {offline} have no leader")
                fixes.append("the brokers hosting them are down")
            max_bytes = _int(cfg.get("max.message.bytes"))
            if max_bytes is not None:
                notes.append(f"max.message.bytes {max_bytes}")
                if role != "input" and max_bytes < s.max_message_bytes:
                    status = "fail" if status == "fail" else "warn"
                    fixes.append(
                        f"raise its max.message.bytes to {s.max_message_bytes} (DANGERCLIP_MAX_MESSAGE_BYTES) or lower "
                        "the setting: larger outputs are refused"
                    )
            retention = _int(cfg.get("retention.ms"))
            if retention is not None:
                notes.append(f"retention.ms {retention}")
                if role == "input" and 0 <= retention < MIN_INPUT_RETENTION_MS:
                    status = "fail" if status == "fail" else "warn"
                    fixes.append("inputs older than the retention are lost while no worker runs: keep a day or more")
            if not cfg:
                notes.append("retention and max.message.bytes not reported by the broker")
            self.add(f"topic {name}", status, ", ".join(notes), "; ".join(fixes), partitions=len(parts), config=cfg)
        self._check_ordering()

    def _topic_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        from kafka.admin import ConfigResource, ConfigResourceType

        if not names:
            return {}
        try:
            res = self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names], config_filter="all"
            )
        except TypeError:  # a kafka-python without config_filter
            res = self._admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        except Exception:  # noqa: BLE001 - brokers that do not answer DescribeConfigs: reported as not reported
            return {}
        return _flatten_configs(res)

    def _check_ordering(self) -> None:
        s = self.settings
        n_in, n_out = self._topics.get(s.input_topic), self._topics.get(s.output_topic)
        if n_in is None or n_out is None:
            return
        if s.output_partitioning == "key":
            self.add("result order", "ok", "results are keyed by the input's key: ordered per key")
        elif n_out == n_in:
            self.add("result order", "ok", f"input partition i → result partition i ({n_in} ↔ {n_out})")
        else:
            self.add(
                "result order",
                "warn",
                f"{n_in} input partitions onto {n_out} result partitions: input i → result i mod {n_out}; each "
                "input partition's order holds, but result partitions mix inputs",
                f"give {s.output_topic} {n_in} partitions for a one-to-one mapping",
            )

    def _check_group(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        s = self.settings
        n_in = self._topics.get(s.input_topic)
        if n_in is None:
            self.add("consumer group", "skip", "no input topic to measure lag on")
            return
        state, members = self._group_state(s.group_id)
        tps = [TopicPartition(s.input_topic, p) for p in range(n_in)]
        opts = {**self._client_options(), "enable_auto_commit": False, "group_id": s.group_id}
        opts.pop("bootstrap_timeout_ms", None)
        try:
            consumer = KafkaConsumer(**opts)
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            self.add("consumer group", "fail", f"cannot read the group's offsets: {e}", "check the ACLs (Group READ)")
            return
        try:
            committed = {tp.partition: consumer.committed(tp) for tp in tps}
            ends = _high_watermarks(consumer, tps, committed, self.timeout_s)
        finally:
            consumer.close()
        lag = {p: max(0, ends[p] - (committed[p] or 0)) for p in ends if ends[p] is not None}
        total = sum(lag.values())
        never = sorted(p for p, c in committed.items() if c is None)
        status: Status = "ok"
        fix = ""
        if state in ("Empty", "Dead") and total:
            status, fix = "warn", "no worker consumes and records wait: start workers (or check why they left)"
        detail = f"group {s.group_id}: {state or 'state not reported'}"
        if members is not None:
            detail += f", {members} member(s)"
        detail += f"; lag {total} over {n_in} partitions"
        if never:
            detail += f"; nothing committed yet on partitions {never}"
        self.add("consumer group", status, detail, fix, state=state, members=members, lag=lag, committed=committed)

    def _group_state(self, group: str) -> tuple[str | None, int | None]:
        try:
            (g,) = self._admin.describe_groups([group])
        except Exception:  # noqa: BLE001 - some brokers answer in ways kafka-python cannot parse
            return None, None
        get = g.get if isinstance(g, dict) else lambda k, d=None: getattr(g, k, d)
        members = get("members")
        return get("group_state") or get("state"), (len(members) if members is not None else None)

    def _check_acls(self) -> None:
        from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType
        from kafka.admin import ACLResourcePatternType as Pattern

        flt = ACLFilter(
            principal=None,
            host="*",
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, Pattern.ANY),
        )
        try:
            acls, error = self._admin.describe_acls(flt)
        except Exception as e:  # noqa: BLE001 - an authorizer-less broker refuses: reported as not reported
            self.add("acls", "skip", f"the broker does not report ACLs ({type(e).__name__})")
            return
        if error is not None and getattr(error, "errno", None):
            self.add("acls", "skip", f"the broker does not report ACLs ({error})")
            return
        self.add("acls", "ok", f"{len(acls)} ACL binding(s) visible to this principal", bindings=len(acls))

    # ------------------------------------------------------------------ report
    def report(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            lines.append(f"{MARKS[c.status]} {c.name:<{width}}  {c.detail}")
            if c.fix:
                lines.append(f"  {'':<{width}}  → {c.fix}")
        counts = {k: sum(c.status == k for c in self.checks) for k in MARKS}
        lines.append(
            f"\n{counts['ok']} ok, {counts['warn']} to look at, {counts['fail']} failed, {counts['skip']} not checked"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"ok": not self.failed, "checks": [asdict(c) for c in self.checks]}, default=str, indent=1)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _flatten_configs(res: Any) -> dict[str, dict[str, str]]:
    """``describe_configs``' answer (its shape varies between kafka-python versions) as ``{topic: {key: value}}``."""
    out: dict[str, dict[str, str]] = {}
    if isinstance(res, dict):  # kafka-python 3: {"topic": {name: {key: value or {"value": ...}}}}
        for name, cfg in (res.get("topic") or {}).items():
            out[name] = {k: str(v.get("value") if isinstance(v, dict) else v) for k, v in (cfg or {}).items()}
        return out
    for response in res if isinstance(res, list) else [res]:  # kafka-python 2: DescribeConfigsResponse objects
        for r in getattr(response, "resources", []):
            name, entries = r[3], r[4]
            out[name] = {e[0]: e[1] for e in entries}
    return out


def _high_watermarks(consumer: Any, tps: list[Any], committed: dict[int, int | None], timeout_s: float) -> dict:
    """Each partition's high watermark, from a fetch (as the worker measures lag), else from ListOffsets.

    Assigning (not subscribing) reads without joining the group; nothing is committed.
    """
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, committed[tp.partition] or 0)
    deadline = time.monotonic() + min(timeout_s, 5.0)
    marks: dict[int, int | None] = {tp.partition: None for tp in tps}
    while time.monotonic() < deadline and any(v is None for v in marks.values()):
        consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is not None:
                marks[tp.partition] = hw
    missing = [tp for tp in tps if marks[tp.partition] is None]
    if missing:
        try:
            for tp, end in consumer.end_offsets(missing).items():
                marks[tp.partition] = end
        except Exception:  # noqa: BLE001 - lag then stays unknown for these partitions
            pass
    return marks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.serve import add_arguments as serve_arguments

    serve_arguments(parser)
    parser.description = (
        "Check the settings, the model, the brokers, the topics, the consumer group, ACLs and the metrics port "
        "of a worker (the same DANGERCLIP_* variables and options as 'dangerclip serve'); exit 1 when a check fails."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each network step")
    parser.add_argument("--no-inference", action="store_true", help="skip the test inference")
    parser.add_argument("--worker-url", help="a running worker's health server, e.g. http://worker:9108")
    parser.add_argument("--no-model", action="store_true", help="skip the model file (it lives in another pod)")


def run(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    from service.serve import settings_from_args

    if logging.getLogger().level > logging.DEBUG:  # the report says it all; -v shows the clients' own logs
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.getLogger("dangerclip").setLevel(logging.WARNING)

    try:
        settings, error = settings_from_args(args), None
    except ValueError as e:
        settings, error = None, e
    doctor = Doctor(
        settings,
        error,
        timeout_s=args.timeout,
        infer=not args.no_inference,
        worker_url=args.worker_url,
        model=not args.no_model,
    )
    doctor.run()
    out(doctor.to_json() if args.json else doctor.report())
    sys.stdout.flush()
    return 1 if doctor.failed else 0
