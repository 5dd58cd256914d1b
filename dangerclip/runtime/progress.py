"""Progress of a long job: a bar on a terminal, a line with the rate and ETA now and then in logs.

A tqdm bar written to a file or a pod's log is one long line of carriage returns; a job whose stderr is not a
terminal logs ``desc: n/total unit, rate unit/s, ETA`` at INFO instead, every ``period_s`` and at the end.
Every long command (training, caching, pseudo-masks, retrieval) gets its progress from :func:`progress`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class LogProgress:
    """Progress for logs (Kubernetes pods, files, CI): a line with the rate and ETA every ``period_s``.

    Offers the part of tqdm's interface the jobs use (``update``, ``set_postfix``, ``close``, ``n``).
    """

    def __init__(
        self, total: int, desc: str = "progress", unit: str = "it", period_s: float = 60.0, initial: int = 0
    ) -> None:
        self.total, self.n, self.period = total, initial, period_s
        self.desc, self.unit, self.start_n, self.logged_n = desc, unit, initial, initial
        self.t0 = self.last = time.perf_counter()
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.period:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        self.logged_n = self.n
        done = f"{self.n}/{self.total} {self.unit}"
        log.info("%s: %s, %.2f %s/s, ETA %.0f s%s", self.desc, done, rate, self.unit, eta, extra)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def close(self) -> None:
        if self.n != self.logged_n:  # the last figures, unless the last line already said them
            self._line(time.perf_counter())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    total: int, desc: str, unit: str = "it", enabled: bool | None = None, initial: int = 0, period_s: float = 60.0
) -> Any:
    """A tqdm bar on stderr when it is a terminal (or ``enabled`` is True), else :class:`LogProgress`.

    Args:
        total: steps expected.
        desc: what is progressing (the line's prefix).
        unit: what a step is (``img``, ``step``).
        enabled: force the bar on (True) or off (False); ``None`` decides by ``sys.stderr.isatty()``.
        initial: steps already done (a resumed job).
        period_s: seconds between log lines when there is no terminal.
    """
    bar = sys.stderr.isatty() if enabled is None else enabled
    if not bar:
        return LogProgress(total, desc=desc, unit=unit, period_s=period_s, initial=initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=sys.stderr, desc=desc)
