"""Benchmark: how long a worker takes to exit on SIGTERM while its produce is stuck, old worker vs new, one run.

    python bench/shutdown.py                     # this tree against commit 6af608e (before the reliability work)
    python bench/shutdown.py --old-ref HEAD~3 --shutdown-timeout 5

For each worker version: an embedded tansu broker, a 1-partition topic, one real ``python -m service.worker``
process (the old one runs from a ``git worktree`` of ``--old-ref``). Records go in; once the worker has taken
them and opened its batch (a long ``max_batch_wait_ms``), the broker is frozen with SIGSTOP, so the batch's
produce and flush hang as on a broker that stopped answering. Then SIGTERM, and the clock runs until the
process exits (capped at ``--cap`` seconds, then SIGKILL — what Kubernetes does after its grace period).
Prints seconds to exit per version and the ratio, all measured in this run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dangerclip_cli.embedded import EmbeddedBroker, free_port  # noqa: E402
from service.topics import ensure_topics  # noqa: E402

MODEL = REPO / "dangerclip" / "assets" / "demo" / "model.onnx"


def _produce(bootstrap: str, topic: str, n: int) -> None:
    from kafka import KafkaProducer

    from dangerclip_cli.demo import SAMPLES

    images = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        p.send(topic, key=f"k{i}".encode(), value=images[i % len(images)].read_bytes())
    p.flush(30)
    p.close(5)


def run_one(src: Path, shutdown_timeout_s: float, cap_s: float, log_dir: Path) -> float:
    """Seconds from SIGTERM to exit of the worker in ``src`` with its produce stuck (``cap_s`` if it hung)."""
    broker = EmbeddedBroker(log_path=log_dir / f"tansu-{src.name}.log").start()
    try:
        ensure_topics(broker.bootstrap_servers, {"in": 1, "out": 1, "dlq": 1})
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(src),
                "DANGERCLIP_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "DANGERCLIP_INPUT_TOPIC": "in",
                "DANGERCLIP_OUTPUT_TOPIC": "out",
                "DANGERCLIP_DEAD_LETTER_TOPIC": "dlq",
                "DANGERCLIP_GROUP_ID": "g",
                "DANGERCLIP_MODEL_PATH": str(MODEL),
                "DANGERCLIP_METRICS_PORT": str(free_port()),
                "DANGERCLIP_SESSION_TIMEOUT_MS": "6000",
                "DANGERCLIP_HEARTBEAT_INTERVAL_MS": "1000",
                "DANGERCLIP_MAX_BATCH_SIZE": "64",
                "DANGERCLIP_MAX_BATCH_WAIT_MS": "4000",
                "DANGERCLIP_PRODUCE_TIMEOUT_S": "30",
                "DANGERCLIP_SHUTDOWN_TIMEOUT_S": str(shutdown_timeout_s),
                "DANGERCLIP_INTRA_OP_THREADS": "1",
            }
        )
        with open(log_dir / f"worker-{src.name}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.worker"], cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            time.sleep(8)  # load the model, join the group
            _produce(broker.bootstrap_servers, "in", 8)
            time.sleep(2)  # the batch is open (4 s wait): freeze the broker before it is scored
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)
            time.sleep(4)  # the batch is scored and its produce hangs
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(cap_s)
                return time.monotonic() - t0
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                return cap_s
        finally:
            if proc.poll() is None:
                proc.kill()
            os.kill(broker.proc.pid, signal.SIGCONT)
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-ref", default="6af608e", help="git ref of the worker to compare with")
    ap.add_argument("--shutdown-timeout", type=float, default=5.0, help="DANGERCLIP_SHUTDOWN_TIMEOUT_S for both")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds after SIGTERM before SIGKILL")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dangerclip-shutdown-") as tmp:
        tmpd = Path(tmp)
        old = tmpd / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), args.old_ref], cwd=REPO, check=True, capture_output=True
        )
        try:
            rows = []
            for name, src in (("old " + args.old_ref, old), ("new (this tree)", REPO)):
                secs = run_one(src, args.shutdown_timeout, args.cap, tmpd)
                rows.append((name, secs))
                sys.stdout.write(
                    f"{name:<20} SIGTERM -> exit: {secs:6.1f} s"
                    f"{'  (hung: SIGKILLed at the cap)' if secs >= args.cap else ''}\n"
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
    sys.stdout.write(
        f"\nshutdown_timeout_s = {args.shutdown_timeout:.0f}; old/new time to exit: {rows[0][1] / rows[1][1]:.1f}x\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
