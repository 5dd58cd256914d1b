"""Benchmark: does the worker keep its contract while its consumer group churns? (fault 1 of the chaos suite)

    python bench/churn.py
    python bench/churn.py --runs 3 --records 3000 --events 12 --batch-size 64 --wait-ms 2000
    python bench/churn.py --model path/to/model.onnx --json-out churn.json

Each run starts an embedded tansu broker's fresh topics, two ``python -m service.worker`` processes, and a
verifiable producer streaming ``--records`` unique keys at ``--rate`` records/s; meanwhile ``--events`` churn
events happen one per ``--interval`` seconds (a worker joins, gets SIGTERM or kill -9, or a plain
kafka-python consumer joins the group and leaves without committing). Then at least two workers finish the
stream. Per run it prints the inputs produced (acknowledged), inputs without an outcome (must be 0),
duplicates (at-least-once allows them), churn events, the worst and median time from send to first outcome,
worker crashes, bad SIGTERM exits and partitions whose commits fell short. The verifier, the fleet and the
faults are ``tests/support/chaos.py``'s, the same the chaos tests use.

Bounded: a run takes about records/rate + events × (interval + a few s) + the settle bound (``--settle-s``);
the whole benchmark stops starting runs after ``--max-seconds``. Exit code 1 when any run broke the contract.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dangerclip_cli.embedded import EmbeddedBroker  # noqa: E402
from tests.support.chaos import ChurnConfig, run_churn  # noqa: E402
from tests.support.service import make_topics  # noqa: E402


def tiny_model(out: Path) -> Path:
    from bench.bench_pipeline import export_random_model

    return export_random_model("tiny", out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--records", type=int, default=1000, help="unique inputs produced per run")
    p.add_argument("--events", type=int, default=8, help="churn events per run")
    p.add_argument("--batch-size", type=int, default=16, help="DANGERCLIP_MAX_BATCH_SIZE")
    p.add_argument("--wait-ms", type=int, default=50, help="DANGERCLIP_MAX_BATCH_WAIT_MS")
    p.add_argument("--rate", type=float, default=40.0, help="records/s the producer sends")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between churn events")
    p.add_argument(
        "--settle-s", type=float, default=60.0, help="after the faults: bound on reaching zero outstanding inputs"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (run i uses seed + i)")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: a tiny one, random weights)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="start no run after this long")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--log-dir", type=Path, default=None, help="keep the workers' and broker's logs here")
    args = p.parse_args(argv)

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="churn-") as tmp_s:
        tmp = args.log_dir or Path(tmp_s)
        tmp.mkdir(parents=True, exist_ok=True)
        model = args.model or tiny_model(tmp / "tiny.onnx")
        broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
        rows = []
        try:
            for i in range(args.runs):
                if time.monotonic() - t_start > args.max_seconds:
                    print(f"stopping after {i} runs: --max-seconds {args.max_seconds:.0f} reached")
                    break
                cfg = ChurnConfig(
                    records=args.records,
                    events=args.events,
                    batch_size=args.batch_size,
                    wait_ms=args.wait_ms,
                    rate_per_s=args.rate,
                    interval_s=args.interval,
                    settle_s=args.settle_s,
                    seed=args.seed + i,
                )
                logs = tmp / f"run{i}"
                logs.mkdir(exist_ok=True)
                t0 = time.monotonic()
                v, _ = run_churn(broker.bootstrap_servers, make_topics(broker.bootstrap_servers), model, logs, cfg)
                row = {
                    "run": i,
                    "produced": v.produced,
                    "without_outcome": len(v.missing),
                    "duplicates": v.duplicates,
                    "churn_events": v.churn_events,
                    "worst_time_to_outcome_s": round(v.worst_latency_s, 2),
                    "p50_time_to_outcome_s": round(v.p50_latency_s, 2),
                    "crashed": len(v.crashed),
                    "bad_sigterm_exits": len(v.bad_exits),
                    "partitions_short_of_end": len(v.uncommitted),
                    "wall_s": round(time.monotonic() - t0, 1),
                    "ok": not v.problems,
                }
                rows.append(row)
                print(" ".join(f"{k}={val}" for k, val in row.items()), flush=True)
                for problem in v.problems:
                    print(f"  ! {problem[:300]}", flush=True)
        finally:
            broker.stop()

    if rows:
        print()
        print(
            f"batch_size={args.batch_size} wait_ms={args.wait_ms} records/run={args.records} "
            f"events/run={args.events} rate={args.rate:g}/s runs={len(rows)}"
        )
        print(f"{'inputs produced':<34}{sum(r['produced'] for r in rows)}")
        print(f"{'inputs without an outcome':<34}{sum(r['without_outcome'] for r in rows)}")
        print(f"{'duplicates':<34}{sum(r['duplicates'] for r in rows)}")
        print(f"{'churn events':<34}{sum(r['churn_events'] for r in rows)}")
        print(f"{'worst time-to-outcome (s)':<34}{max(r['worst_time_to_outcome_s'] for r in rows)}")
        print(
            f"{'crashes / bad SIGTERM exits':<34}{sum(r['crashed'] for r in rows)} / "
            f"{sum(r['bad_sigterm_exits'] for r in rows)}"
        )
        print(f"{'runs that kept the contract':<34}{sum(r['ok'] for r in rows)} of {len(rows)}")
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2)
        )
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
