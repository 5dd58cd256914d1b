"""``dangerclip serve``: settings → model → worker, the HTTP probes, signals and a bounded exit.

The worker (``service.worker``) knows nothing of processes; this module owns the process: it loads the model,
serves ``/metrics``, ``/healthz`` and ``/readyz``, turns SIGTERM/SIGINT into a stop, and guarantees the exit
within ``shutdown_timeout_s`` of the first signal whatever is stuck (a watchdog ends the process; what was
not committed is read again by the partition's next owner). Kubernetes sends SIGKILL after its grace period,
not a second SIGTERM, so the bound must hold on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from dangerclip.runtime.errors import UserError, run_command
from dangerclip.runtime.filekind import expect
from dangerclip.runtime.logs import DEBUG_ENV, setup_logging, split_verbose
from service.handler import Handler
from service.identify import Identifier, IndexMatcher
from service.metrics import Metrics
from service.settings import Settings
from service.worker import Worker

log = logging.getLogger(__name__)

WATCHDOG_GRACE_S = 2.0
"""How long past ``shutdown_timeout_s`` the watchdog waits for a clean exit before ending the process."""


def build(settings: Settings, metrics: Metrics | None = None) -> tuple[Worker, Metrics]:
    """Load the model and assemble a worker from settings."""
    from dangerclip.runtime.scorer import DangerScorer

    if settings.model_path is None:
        raise UserError("no model: set DANGERCLIP_MODEL_PATH or pass --model")
    expect(settings.model_path, "onnx", what="model")
    metrics = metrics or Metrics()
    scorer = DangerScorer(
        settings.model_path,
        providers=settings.provider_list,
        intra_op_threads=settings.intra_op_threads,
        thresholds=settings.thresholds or None,
        max_batch=settings.max_batch_size,
        trt_cache_dir=settings.trt_cache_dir,
        trt_fp16=settings.trt_fp16,
    )
    card = scorer.card
    metrics.set_model(
        name=card.name,
        version=card.version,
        sha256=scorer.sha256,
        provider=scorer.provider,
        mode=card.mode,
        trained=card.trained,
    )
    log.info(
        "model %s %s loaded from %s on %s (categories %s)",
        card.name,
        card.version,
        settings.model_path,
        scorer.provider,
        list(card.prompts),
    )
    if not card.trained:
        log.warning("model %s %s is UNTRAINED: its scores are meaningless", card.name, card.version)
    handler = Handler(scorer, settings, metrics, identifier=build_identifier(settings, metrics))
    return Worker(settings, handler, metrics), metrics


def build_identifier(settings: Settings, metrics: Metrics | None = None) -> Identifier | None:
    """The identification stage the settings ask for (``None`` when none is configured)."""
    if settings.type_head_path is None and settings.index_path is None:
        return None
    head = matcher = None
    if settings.type_head_path is not None:
        from dangerclip.runtime.typehead import TypeHead

        head = TypeHead(
            settings.type_head_path,
            providers=["CPUExecutionProvider"],
            intra_op_threads=settings.intra_op_threads,
            top_k=settings.type_head_top_k,
        )
        log.info(
            "identification stage: type head %s %s (%d types) on flagged images",
            head.card.name,
            head.card.version,
            len(head.card.classes),
        )
    if settings.index_path is not None:
        from dangerclip.runtime.index import IndexReader

        embedder = None
        if settings.embedder_path is not None:
            from dangerclip.runtime.embedder import Embedder

            embedder = Embedder(
                settings.embedder_path, providers=["CPUExecutionProvider"], intra_op_threads=settings.intra_op_threads
            )
        reader = IndexReader(settings.index_path, embedder=embedder, qdrant=settings.index_qdrant)
        matcher = IndexMatcher(reader, settings.index_top_k, settings.index_reload_s)
        signals = "PDQ" if embedder is None else f"PDQ and {embedder.card.name}@{embedder.card.version} embeddings"
        log.info("identification stage: index %s (%d entries, %s)", settings.index_path, len(reader), signals)
    return Identifier(type_head=head, matcher=matcher, metrics=metrics)


def _start_watchdog(after_s: float) -> None:
    """End the process ``after_s`` from now if it has not exited by itself (a produce or close stuck)."""

    def _expire() -> None:
        log.error("shutdown took longer than %.0fs: exiting now, uncommitted records will be read again", after_s)
        logging.shutdown()
        os._exit(1)

    t = threading.Timer(after_s, _expire)
    t.daemon = True
    t.start()


def serve(settings: Settings, max_records: int | None = None, timeout_s: float | None = None) -> int:
    """Run one worker with its HTTP server until SIGTERM/SIGINT. Returns the process exit code.

    The probes listen before the model loads (``/healthz`` alive, ``/readyz`` says "loading the model"), so
    a slow model load is visible and never looks like a dead worker; a signal during the load ends the
    process as soon as the load returns, before anything is consumed.
    """
    from service.http import HealthServer

    # kafka-python logs every connection at INFO; its warnings and errors are what an operator needs.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if not log.isEnabledFor(logging.DEBUG):
        # Each failed connection attempt is logged there as an ERROR; the worker says it once per retry instead.
        for name in ("kafka.net.manager", "kafka.net.connection"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    metrics = Metrics()
    holder: dict[str, Worker] = {}

    def alive() -> tuple[bool, str]:
        w = holder.get("worker")
        return w.alive() if w is not None else (True, "starting: loading the model")

    def ready() -> tuple[bool, str]:
        w = holder.get("worker")
        return w.ready() if w is not None else (False, "starting: loading the model")

    server = None
    if settings.metrics_enabled:
        server = HealthServer(metrics.registry, settings.metrics_host, settings.metrics_port, alive, ready).start()
    signals_seen: list[int] = []

    def _on_signal(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        worker = holder.get("worker")
        if len(signals_seen) == 1:
            log.info("received %s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
            if worker is not None:
                worker.stop()
            _start_watchdog(settings.shutdown_timeout_s + WATCHDOG_GRACE_S)
        elif worker is not None:
            log.warning("second signal: stopping retries now")
            worker.hard_stop()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker, _ = build(settings, metrics)
        holder["worker"] = worker
        if signals_seen:
            log.info("stopped while loading the model: exiting before consuming anything")
            return 0
        return worker.run(max_records=max_records, timeout_s=timeout_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------- dangerclip serve
_CLI_FIELDS = {
    "model": "model_path",
    "bootstrap_servers": "bootstrap_servers",
    "input_topic": "input_topic",
    "output_topic": "output_topic",
    "dead_letter_topic": "dead_letter_topic",
    "group_id": "group_id",
    "max_batch_size": "max_batch_size",
    "max_batch_wait_ms": "max_batch_wait_ms",
    "metrics_host": "metrics_host",
    "metrics_port": "metrics_port",
    "providers": "providers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a Kafka scoring worker. Every setting comes from DANGERCLIP_* environment variables "
        "(see --env-help); the options below override them."
    )
    parser.add_argument("--model", help="the exported .onnx model (DANGERCLIP_MODEL_PATH)")
    parser.add_argument("--bootstrap-servers", help="host:port[,host:port] (DANGERCLIP_BOOTSTRAP_SERVERS)")
    parser.add_argument("--input-topic")
    parser.add_argument("--output-topic")
    parser.add_argument("--dead-letter-topic")
    parser.add_argument("--group-id")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-batch-wait-ms", type=int)
    parser.add_argument("--metrics-host")
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--providers", help="auto, cpu, cuda, tensorrt")
    parser.add_argument(
        "--max-records",
        type=int,
        default=None,
        help="exit after this many results and dead letters (for tests and benchmarks)",
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines (DANGERCLIP_LOG_JSON)")
    parser.add_argument("--env-help", action="store_true", help="list every DANGERCLIP_* variable and exit")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from the environment, overridden by the command-line options that were given."""
    overrides = {f: getattr(args, a) for a, f in _CLI_FIELDS.items() if getattr(args, a, None) is not None}
    overrides.update(extra)
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    if args.env_help:
        for name, doc in Settings.model_construct().env_help():
            sys.stdout.write(f"{name:<42} {doc}\n")
        sys.stdout.write(f"{DEBUG_ENV:<42} comma-separated loggers to log at DEBUG (service.delivery.receipts)\n")
        return 0
    settings = settings_from_args(args)  # a bad setting: the error contract names its variable (exit 2)
    if settings.log_json and not args.json_logs:
        setup_logging(json_logs=True)
    code = serve(settings, max_records=args.max_records, timeout_s=args.max_seconds)
    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        # A produce or decode thread that will not end must not hold the process past its shutdown bound.
        log.warning("exiting with threads still busy: %s", stuck)
        logging.shutdown()
        os._exit(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.serve``: the worker without the umbrella CLI (what a container may run directly)."""
    verbose, args = split_verbose(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dangerclip serve", description="run a Kafka scoring worker")
    add_arguments(parser)
    ns = parser.parse_args(args)
    setup_logging(verbose, json_logs=bool(ns.json_logs))
    return run_command("serve", run, ns, verbose, env_prefix="DANGERCLIP_")


if __name__ == "__main__":
    sys.exit(main())
