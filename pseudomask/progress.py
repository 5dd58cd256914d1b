"""Progress of the job: a bar on a terminal, a line with the rate and ETA every minute in logs (pods)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class LogProgress:
    """Progress for logs (Kubernetes pods, no TTY): a line with images/s and ETA every ``period_s``."""

    def __init__(self, total: int, period_s: float = 60.0) -> None:
        self.total, self.n, self.period = total, 0, period_s
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.period:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log.info("pseudomask: %d/%d images, %.2f images/s, ETA %.0f s", self.n, self.total, rate, eta)

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr when ``enabled``, else ``LogProgress``."""
    if not enabled:
        return LogProgress(total)
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr, desc="pseudomask")
