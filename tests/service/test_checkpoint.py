"""The checkpoint's promise — a commit never passes a record without an outcome — under random rebalances.

A small simulated client stands in for kafka-python's rules (the only neighbour faked here): a partition
handed straight back keeps its fetch position, one that went away restarts from the committed offset, and
``seek`` moves the position. Hypothesis drives random interleavings of polls, batches, revocations and
reassignments; the assertion is the contract, checked after every step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.checkpoint import Checkpoint, PartitionState

TP = ("in", 0)


def test_commit_point_is_the_lowest_outstanding_offset() -> None:
    s = PartitionState(TP)
    for o in (10, 11, 12, 15):  # gaps, as compaction and transaction markers leave them
        s.polled(o)
    s.finished(11)
    assert s.to_commit() == 10
    s.finished(10)
    assert s.to_commit() == 12
    s.finished(12)
    s.finished(15)
    assert s.to_commit() == 16
    s.committed = 16
    assert s.to_commit() is None


def test_dropped_records_hold_the_commit_point_until_sought_back() -> None:
    cp = Checkpoint()
    assert cp.assign([TP]) == {}
    s = cp.state(TP)
    assert s is not None
    for o in range(6):
        s.polled(o)
    for o in range(3):
        s.finished(o)
    for o in range(3, 6):
        s.dropped(o)
    cp.revoke([TP])
    assert cp.assign([TP]) == {TP: 3}  # handed straight back: seek to the first dropped record
    assert cp.state(TP) is s and cp.to_commit() == {TP: 3}
    cp.resumed(TP)
    assert cp.state(TP).resume_at is None


def test_a_partition_that_went_elsewhere_starts_fresh() -> None:
    cp = Checkpoint()
    cp.assign([TP])
    old = cp.state(TP)
    old.polled(0)
    old.dropped(0)
    cp.revoke([TP])
    cp.assign([("in", 1)])  # the group gave it to someone else
    assert cp.assign([TP]) == {} and cp.state(TP) is not old
    cp.revoke([TP], lost=True)
    assert cp.assign([TP]) == {}


class SimClient:
    """kafka-python's position rules for one partition of ``n`` records, and a worker using the checkpoint."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cp = Checkpoint()
        self.committed = 0  # the group's committed offset
        self.position: int | None = None
        self.pending: list[tuple[int, PartitionState]] = []
        self.inflight: list[tuple[int, PartitionState]] = []
        self.outcomes: set[int] = set()
        self.owned = False

    def assign(self) -> None:
        for tp, off in self.cp.assign([TP]).items():
            self.position = off
            self.cp.resumed(tp)
        if self.position is None:
            self.position = self.committed
        self.owned = True

    def revoke(self, lost: bool) -> None:
        if not self.owned:
            return
        for off, state in self.pending:
            state.dropped(off)
        self.pending = []
        self.cp.revoke([TP], lost=lost)
        self.owned = False
        if lost:
            self.position = None

    def away_and_back(self) -> None:
        """Another member owned it meanwhile (and did nothing): the position restarts at the committed one."""
        self.revoke(lost=False)
        self.cp.assign([])
        self.position = None
        self.assign()

    def poll(self, k: int) -> None:
        if not self.owned or self.position is None:
            return
        st = self.cp.state(TP)
        for _ in range(k):
            if self.position >= self.n:
                break
            st.polled(self.position)
            self.pending.append((self.position, st))
            self.position += 1

    def dispatch(self) -> None:
        if not self.inflight:
            self.inflight, self.pending = self.pending, []

    def finish(self) -> None:
        for off, state in self.inflight:
            state.finished(off)
            self.outcomes.add(off)
        self.inflight = []
        if self.owned:
            offsets = self.cp.to_commit()
            if TP in offsets:
                self.committed = max(self.committed, offsets[TP])
                self.cp.committed(offsets)

    def check(self) -> None:
        missing = [o for o in range(self.committed) if o not in self.outcomes]
        assert not missing, f"committed {self.committed} past records without an outcome: {missing[:10]}"


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("poll"), st.integers(1, 5)),
        st.tuples(st.sampled_from(["dispatch", "finish", "rebalance", "lost", "away_and_back"]), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(ops=OPS)
def test_no_commit_ever_passes_a_record_without_an_outcome(ops: list[tuple[str, int]]) -> None:
    sim = SimClient(n=40)
    sim.assign()
    for op, k in ops:
        if op == "poll":
            sim.poll(k)
        elif op == "dispatch":
            sim.dispatch()
        elif op == "finish":
            sim.finish()
        elif op == "rebalance":  # eager: everything revoked, then handed straight back
            sim.revoke(lost=False)
            sim.assign()
        elif op == "lost":
            sim.revoke(lost=True)
            sim.assign()
        else:
            sim.away_and_back()
        sim.check()
    # and it always gets to the end: every record gets an outcome and the commit reaches the end
    for _ in range(200):
        sim.poll(5)
        sim.dispatch()
        sim.finish()
        sim.check()
    assert sim.committed == sim.n and sim.outcomes == set(range(sim.n))


def test_an_idle_partition_commits_past_a_transaction_marker() -> None:
    s = PartitionState(TP)
    s.polled(7)
    s.caught_up(9)  # still outstanding: the position says nothing yet
    s.finished(7)
    assert s.to_commit() == 8
    s.caught_up(9)  # offset 8 is the commit marker the consumer skipped: lag can reach zero
    assert s.to_commit() == 9
    s.dropped(12)
    s.caught_up(20)  # dropped records pin the commit point until they are read again
    assert s.to_commit() == 9
