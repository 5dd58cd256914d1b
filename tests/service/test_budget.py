"""PixelBudget with real threads: what fits runs at once, what does not waits its turn, an image larger than the
whole budget runs alone, waits are first come first served and may time out, nothing is left held."""

from __future__ import annotations

import io
import random
import threading
import time

import pytest
from PIL import Image

from dangerclip.runtime.preprocess import ImageError, decode_image
from service.budget import BudgetTimeout, PixelBudget

pytestmark = pytest.mark.timeout(60)
WAIT_S = 5.0
"""Longest any step waits for another thread; a healthy run takes milliseconds."""


def _hold(
    budget: PixelBudget,
    pixels: int,
    entered: threading.Event,
    release: threading.Event,
    log: list[str] | None = None,
    name: str = "",
) -> threading.Thread:
    """A thread that reserves ``pixels``, sets ``entered``, holds until ``release``."""

    def run() -> None:
        with budget.reserve(pixels):
            if log is not None:
                log.append(name)
            entered.set()
            release.wait(WAIT_S)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(cond, timeout: float = WAIT_S) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.001)


def test_reservations_that_fit_run_at_once():
    b = PixelBudget(100)
    e1, e2, go = threading.Event(), threading.Event(), threading.Event()
    t1, t2 = _hold(b, 40, e1, go), _hold(b, 60, e2, go)
    assert e1.wait(WAIT_S) and e2.wait(WAIT_S)
    assert b.in_use == 100
    go.set()
    t1.join(WAIT_S), t2.join(WAIT_S)
    assert b.in_use == 0 and b.waiting == 0


def test_a_reservation_that_does_not_fit_waits_for_a_release():
    b = PixelBudget(100)
    e1, e2, go1, go2 = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    t1 = _hold(b, 60, e1, go1)
    assert e1.wait(WAIT_S)
    t2 = _hold(b, 60, e2, go2)
    _wait_for(lambda: b.waiting == 1)
    assert not e2.wait(0.05) and b.in_use == 60
    go1.set()
    assert e2.wait(WAIT_S)
    assert b.in_use == 60
    go2.set()
    t1.join(WAIT_S), t2.join(WAIT_S)
    assert b.in_use == 0


def test_an_image_larger_than_the_budget_runs_alone():
    b = PixelBudget(10)
    # Nothing in flight: admitted at once, although 50 > 10.
    e_big, go_big = threading.Event(), threading.Event()
    t_big = _hold(b, 50, e_big, go_big)
    assert e_big.wait(WAIT_S) and b.in_use == 50
    # While it runs, even a one-pixel reservation waits.
    e_small, go_small = threading.Event(), threading.Event()
    t_small = _hold(b, 1, e_small, go_small)
    assert not e_small.wait(0.05)
    go_big.set()
    assert e_small.wait(WAIT_S)
    go_small.set()
    t_big.join(WAIT_S), t_small.join(WAIT_S)
    assert b.in_use == 0


def test_an_oversized_image_waits_for_what_is_in_flight_then_runs_alone():
    b = PixelBudget(10)
    e1, go1 = threading.Event(), threading.Event()
    t1 = _hold(b, 5, e1, go1)
    assert e1.wait(WAIT_S)
    e_big, go_big = threading.Event(), threading.Event()
    t_big = _hold(b, 50, e_big, go_big)
    assert not e_big.wait(0.05)
    go1.set()
    assert e_big.wait(WAIT_S) and b.in_use == 50
    go_big.set()
    t1.join(WAIT_S), t_big.join(WAIT_S)


def test_first_come_first_served_a_large_waiter_is_not_starved():
    b = PixelBudget(100)
    log: list[str] = []
    e1, go1 = threading.Event(), threading.Event()
    t1 = _hold(b, 50, e1, go1, log, "first")
    assert e1.wait(WAIT_S)
    e_big, go_big = threading.Event(), threading.Event()
    t_big = _hold(b, 80, e_big, go_big, log, "big")
    _wait_for(lambda: b.waiting == 1)
    # 10 pixels would fit beside the first, but the big one asked before: it waits behind it.
    e_small, go_small = threading.Event(), threading.Event()
    t_small = _hold(b, 10, e_small, go_small, log, "small")
    _wait_for(lambda: b.waiting == 2)
    assert not e_small.wait(0.05)
    go1.set()
    assert e_big.wait(WAIT_S)
    # 80 + 10 fit together: the small one follows at once.
    assert e_small.wait(WAIT_S)
    assert log == ["first", "big", "small"]
    go_big.set(), go_small.set()
    for t in (t1, t_big, t_small):
        t.join(WAIT_S)
    assert b.in_use == 0


def test_timeout_gives_up_holding_nothing_and_lets_the_next_in_line_through():
    b = PixelBudget(100, timeout_s=0.05)
    e1, go1 = threading.Event(), threading.Event()
    t1 = _hold(b, 90, e1, go1)
    assert e1.wait(WAIT_S)
    t0 = time.monotonic()
    with pytest.raises(BudgetTimeout, match="not admitted"):
        with b.reserve(50):
            pytest.fail("admitted over the budget")
    assert 0.04 <= time.monotonic() - t0 < WAIT_S
    assert b.in_use == 90 and b.waiting == 0
    # The abandoned place in the queue does not block a reservation that fits.
    with b.reserve(10, timeout=WAIT_S):
        assert b.in_use == 100
    go1.set()
    t1.join(WAIT_S)
    assert b.in_use == 0


def test_released_when_the_block_raises():
    b = PixelBudget(10)
    with pytest.raises(RuntimeError):
        with b.reserve(7):
            assert b.in_use == 7
            raise RuntimeError("decode failed")
    assert b.in_use == 0 and b.waiting == 0


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        PixelBudget(0)
    with pytest.raises(ValueError):
        with PixelBudget(10).reserve(-1):
            pass
    with PixelBudget(10).reserve(0):
        pass


def test_many_threads_never_exceed_the_budget():
    b = PixelBudget(1000)
    rng = random.Random(0)
    sizes = [rng.choice([1, 50, 300, 700, 1000, 2500]) for _ in range(400)]
    lock = threading.Lock()
    state = {"in_flight": 0, "pixels": 0, "violations": 0, "max": 0}

    def work(n: int) -> None:
        with b.reserve(n, timeout=WAIT_S):
            with lock:
                state["in_flight"] += 1
                state["pixels"] += n
                state["max"] = max(state["max"], state["pixels"])
                if state["pixels"] > b.total and state["in_flight"] > 1:
                    state["violations"] += 1
            time.sleep(0.0005)
            with lock:
                state["in_flight"] -= 1
                state["pixels"] -= n

    threads = [threading.Thread(target=lambda c=c: [work(n) for n in c]) for c in (sizes[i::8] for i in range(8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert state["violations"] == 0
    assert state["max"] > b.total  # oversized images did run (alone)
    assert b.in_use == 0 and b.waiting == 0


def test_decode_image_holds_the_budget_for_the_whole_decode(monkeypatch):
    import dangerclip.runtime.preprocess as pp

    b = PixelBudget(10_000_000)
    asked: list[int] = []
    held_during: list[int] = []

    def spy(pixels: int):  # noqa: ANN202
        asked.append(pixels)
        return b.reserve(pixels)

    # The two steps that touch pixels (decode, then conversion) must both run inside the reservation.
    for step in ("_load", "_rgb"):
        real = getattr(pp, step)

        def wrapped(*a, _real=real, **kw):  # noqa: ANN002, ANN003, ANN202
            held_during.append(b.in_use)
            return _real(*a, **kw)

        monkeypatch.setattr(pp, step, wrapped)

    buf = io.BytesIO()
    Image.new("RGBA", (300, 200), (1, 2, 3, 4)).save(buf, "PNG")
    out = decode_image(buf.getvalue(), reserve=spy)
    assert out.size == (300, 200) and asked == [60_000] and held_during == [60_000, 60_000] and b.in_use == 0
    # Refused from the header: nothing reserved.
    with pytest.raises(ImageError):
        decode_image(buf.getvalue(), max_pixels=1000, reserve=spy)
    assert asked == [60_000]
    # A broken image gives back what it reserved.
    with pytest.raises(ImageError) as e:
        decode_image(buf.getvalue()[:200], reserve=spy)
    assert e.value.reason == "decode_error" and asked == [60_000, 60_000] and b.in_use == 0
