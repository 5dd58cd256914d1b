"""A budget of pixels being decoded at once across the decode threads.

Decoding costs memory in proportion to the image's pixels (``bench/decode_memory.py`` measures how much per
format), so bounding the pixels in flight bounds the decoders' memory whatever arrives: a decode reserves its
image's header pixel count before any pixel is decoded and gives it back when done
(``decode_image(..., reserve=budget.reserve)``).

Admission is first come, first served: a reservation waits until every earlier one has been admitted and its
own pixels fit, so a large image is never starved by a stream of small ones. An image larger than the whole
budget is admitted alone, once nothing else is in flight, so nothing deadlocks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class BudgetTimeout(TimeoutError):
    """A reservation was not admitted within its timeout."""


class PixelBudget:
    """Thread-safe count of pixels being decoded, capped at ``total_pixels``.

    Args:
        total_pixels: pixels that may be in flight at once (>= 1).
        timeout_s: default longest wait for a reservation; None waits for as long as it takes.
    """

    def __init__(self, total_pixels: int, *, timeout_s: float | None = None) -> None:
        if total_pixels < 1:
            raise ValueError(f"total_pixels must be at least 1, got {total_pixels}")
        self.total = int(total_pixels)
        self.timeout_s = timeout_s
        self._in_use = 0
        self._in_flight = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition(threading.Lock())

    @property
    def in_use(self) -> int:
        """Pixels reserved now (a gauge; may exceed ``total`` while one oversized image is decoded alone)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Reservations waiting to be admitted."""
        return len(self._queue)

    @contextmanager
    def reserve(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block, waiting until they fit.

        Args:
            pixels: the image's pixel count (>= 0).
            timeout: longest wait in seconds; None uses the budget's ``timeout_s``.

        Raises:
            BudgetTimeout: not admitted in time (nothing is held then).
            ValueError: ``pixels`` is negative.
        """
        if pixels < 0:
            raise ValueError(f"pixels must be >= 0, got {pixels}")
        timeout = self.timeout_s if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and self._fits(pixels)):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise BudgetTimeout(
                            f"{pixels} pixels not admitted in {timeout:g} s ({self._in_use} of {self.total} in use)"
                        )
                    self._cond.wait(left)
            finally:
                self._queue.remove(ticket)
                # Whether admitted or given up, the next in line may now be at the head.
                self._cond.notify_all()
            self._in_use += pixels
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= pixels
                self._in_flight -= 1
                self._cond.notify_all()

    def _fits(self, pixels: int) -> bool:
        return self._in_use + pixels <= self.total or self._in_flight == 0
