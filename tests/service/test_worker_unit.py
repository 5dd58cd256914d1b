"""Worker pieces that need no broker."""

from __future__ import annotations

from service.handler import InputRecord
from service.worker import Backoff, _Batch


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


def test_batch_commits_the_next_offset_per_partition() -> None:
    recs = [InputRecord("t", p, o, None, None, b"") for p, o in [(0, 5), (1, 2), (0, 7), (0, 6)]]
    assert _Batch(recs, []).offsets() == {("t", 0): 8, ("t", 1): 3}
