"""Benchmark: time to outcome of a URI fetch against a hostile upstream, this tree's fetcher vs an old one, one run.

    python bench/hostile_inputs.py                          # against service/fetch.py of 6af608e, timeout 2 s
    python bench/hostile_inputs.py --interval 0.5 --cap 30 --old-ref HEAD~5

Starts ``tests/support/hostile_http.py`` on 127.0.0.1 (dripping one byte per ``--interval``), then fetches
every path with ``UriFetcher(enabled, [server], uri_max_bytes default, --timeout)``: first with this tree's
``service/fetch.py``, one path after another, then with ``--old-ref``'s ``service/fetch.py`` (loaded from
``git show`` into a temporary module), every path in its own thread started together and joined against
``--cap`` seconds, a call still running then being reported as ``>cap``. The old calls run side by side only
to bound the run; they wait on sockets, not on the CPU. Prints per path the seconds to the outcome and the
outcome (bytes, a ``FetchError`` reason, or the exception that escaped), the ratio old/new where the old took
0.1 s or more, and the worst time to outcome of a hostile input for each, all measured in this run.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.fetch import UriFetcher  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.hostile_http import PATHS, HostileServer  # noqa: E402

BENIGN = ("/good.jpg", "/redirect-good")


def load_old_fetch(ref: str, tmp: Path) -> ModuleType:
    """``service/fetch.py`` as of ``ref``, imported as a module of its own."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:service/fetch.py"], check=True, capture_output=True, text=True
    ).stdout
    path = tmp / "old_fetch.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_fetch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_fetch"] = module  # dataclasses and annotations look their module up here
    spec.loader.exec_module(module)
    return module


class Outcome:
    """One fetch: seconds to its outcome (None while running) and the outcome in words."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.outcome = "running"

    def snapshot(self) -> Outcome:
        copy = Outcome()
        copy.seconds, copy.outcome = self.seconds, self.outcome
        return copy

    @property
    def escaped(self) -> bool:
        return self.outcome.startswith("ESCAPED")


def timed(fetcher: object, uri: str, into: Outcome) -> None:
    t0 = time.monotonic()
    try:
        body = fetcher.fetch(uri)  # type: ignore[attr-defined]
        outcome = f"{len(body)} bytes"
    except Exception as e:  # noqa: BLE001 - what escapes is the measurement
        reason = getattr(e, "reason", None)
        outcome = reason if reason is not None else f"ESCAPED {type(e).__name__}"
    into.seconds, into.outcome = time.monotonic() - t0, outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-ref", default="6af608e", help="git ref of the fetcher to compare with")
    ap.add_argument("--timeout", type=float, default=2.0, help="the fetchers' timeout_s")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two dripped bytes")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds an old call may run before it counts as hung")
    args = ap.parse_args(argv)

    max_bytes = Settings(_env_file=None).uri_max_bytes
    paths = sorted(PATHS)
    with tempfile.TemporaryDirectory() as tmp, HostileServer(interval_s=args.interval) as srv:
        old_module = load_old_fetch(args.old_ref, Path(tmp))
        new = UriFetcher(True, [srv.host_entry], max_bytes, args.timeout)
        old = old_module.UriFetcher(True, [srv.host_entry], max_bytes, args.timeout)

        new_out = {p: Outcome() for p in paths}
        for p in paths:
            timed(new, srv.url(p), new_out[p])

        old_out = {p: Outcome() for p in paths}
        threads = [threading.Thread(target=timed, args=(old, srv.url(p), old_out[p]), daemon=True) for p in paths]
        cap_end = time.monotonic() + args.cap
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, cap_end - time.monotonic()))
        old_out = {p: o.snapshot() for p, o in old_out.items()}  # what had ended by the cap
        # closing the server ends the connections the hung old calls still read from

    print(
        f"timeout_s={args.timeout:g}, drip interval {args.interval:g} s, uri_max_bytes={max_bytes}, "
        f"old = {args.old_ref}, cap {args.cap:g} s"
    )
    print(f"{'path':<18} {'new s':>7}  {'new outcome':<18} {'old s':>7}  {'old outcome':<26} {'old/new':>8}")

    def shown(o: Outcome) -> tuple[str, float]:
        return (f"{o.seconds:7.3f}", o.seconds) if o.seconds is not None else (f">{args.cap:g}".rjust(7), args.cap)

    worst_new: tuple[float, str] = (0.0, "")
    worst_old: tuple[float, str] = (0.0, "")
    for p in paths:
        (ns, nv), (os_, ov) = shown(new_out[p]), shown(old_out[p])
        # below 0.1 s both are a local round trip and the ratio says nothing
        ratio_s = (">" if old_out[p].seconds is None else "") + f"{ov / nv:.1f}x" if ov >= 0.1 else "-"
        print(f"{p:<18} {ns}  {new_out[p].outcome:<18} {os_}  {old_out[p].outcome:<26} {ratio_s:>8}")
        if p not in BENIGN:
            worst_new = max(worst_new, (nv, p))
            worst_old = max(worst_old, (ov, p))
    hung = sum(o.seconds is None for o in old_out.values())
    old_worst = f"{worst_old[0]:.2f} s" if hung == 0 else f">{args.cap:g} s"
    print(
        f"worst time to outcome of a hostile input: new {worst_new[0]:.2f} s ({worst_new[1]}), "
        f"old {old_worst} ({worst_old[1]}); old calls still running at the cap: {hung}"
    )
    print(
        f"exceptions other than FetchError: new {sum(o.escaped for o in new_out.values())}, "
        f"old {sum(o.escaped for o in old_out.values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
