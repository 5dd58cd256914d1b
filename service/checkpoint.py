"""Per-partition offset bookkeeping: which records are out, which are done, what may be committed.

One ``PartitionState`` per assigned partition, held by one ``Checkpoint``. It knows no Kafka client: the
worker tells it what was polled, finished, dropped and committed, and asks it what to commit and where a
partition must resume. quix-streams keeps its offsets the same way (``checkpointing/checkpoint.py``).

The rules that make "nothing lost" hold by construction:

- the offset to commit is the lowest offset still outstanding (polled, no outcome yet), or just past the
  highest finished offset when none is; so a commit never passes a record without an outcome, whatever
  order batches finish in and whatever gaps (compaction, transaction markers) the offsets have;
- a record dropped before it had an outcome (its partition was revoked while it waited for a batch) sets
  the partition's resume point, and a partition assigned again to this worker is sought back there: the
  client keeps the fetch position of a partition it owned before, which would otherwise skip the dropped
  records;
- each assignment of a partition gets a fresh ``PartitionState`` unless the partition stayed with this
  worker across the rebalance; records carry the state they were polled under, so a batch from an earlier
  ownership that finishes late can never move the new ownership's commit point.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(eq=False)
class PartitionState:
    """Offsets of one partition during one ownership.

    Attributes:
        tp: ``(topic, partition)``.
        outstanding: offsets polled and not yet finished, ascending.
        finished_to: one past the highest finished offset (None: nothing finished yet).
        committed: the last committed offset known (from the group coordinator or our own commit).
        resume_at: the lowest offset dropped without an outcome; the partition must be read again from here.
    """

    tp: TopicPartition
    outstanding: list[int] = field(default_factory=list)
    finished_to: int | None = None
    committed: int | None = None
    resume_at: int | None = None

    def polled(self, offset: int) -> None:
        bisect.insort(self.outstanding, offset)

    def finished(self, offset: int) -> None:
        i = bisect.bisect_left(self.outstanding, offset)
        if i < len(self.outstanding) and self.outstanding[i] == offset:
            del self.outstanding[i]
        self.finished_to = offset + 1 if self.finished_to is None else max(self.finished_to, offset + 1)

    def dropped(self, offset: int) -> None:
        i = bisect.bisect_left(self.outstanding, offset)
        if i < len(self.outstanding) and self.outstanding[i] == offset:
            del self.outstanding[i]
        self.resume_at = offset if self.resume_at is None else min(self.resume_at, offset)

    def caught_up(self, position: int) -> None:
        """The consumer's position while nothing is outstanding: every record below it has an outcome. Lets an
        idle partition commit past what follows its last record (a transaction's commit marker), so its lag
        can reach zero."""
        if not self.outstanding and self.resume_at is None:
            self.finished_to = position if self.finished_to is None else max(self.finished_to, position)

    def commit_point(self) -> int | None:
        """The offset that may be committed now (every record below it has an outcome), or None."""
        point = self.outstanding[0] if self.outstanding else self.finished_to
        if point is not None and self.resume_at is not None:
            point = min(point, self.resume_at)
        return point

    def to_commit(self) -> int | None:
        """The commit point if it is ahead of what is committed, else None."""
        point = self.commit_point()
        if point is None or self.finished_to is None:  # nothing done in this ownership: nothing to say
            return None
        if self.committed is not None and point <= self.committed:
            return None
        return point


class Checkpoint:
    """The states of the partitions this worker owns, and the rebalance rules above."""

    def __init__(self) -> None:
        self.owned: dict[TopicPartition, PartitionState] = {}
        self._parked: dict[TopicPartition, PartitionState] = {}

    def state(self, tp: TopicPartition) -> PartitionState | None:
        return self.owned.get(tp)

    def revoke(self, tps: Iterable[TopicPartition], lost: bool = False) -> list[PartitionState]:
        """Stop owning ``tps``. Their states are parked (the group may hand them straight back) unless the
        membership was ``lost``, when the client forgets their positions too. Returns the removed states."""
        gone = []
        for tp in tps:
            st = self.owned.pop(tp, None)
            if st is None:
                continue
            gone.append(st)
            if not lost:
                self._parked[tp] = st
        return gone

    def assign(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Own ``tps``. Returns ``{tp: offset}`` for the partitions the consumer must seek back to.

        A partition handed back right after its revocation keeps its state (and the client keeps its fetch
        position); if records were dropped meanwhile, it must resume at the first of them. Any other
        partition starts fresh from the group's committed offset, which the client looks up itself.
        """
        seeks: dict[TopicPartition, int] = {}
        for tp in tps:
            if tp in self.owned:
                continue
            st = self._parked.pop(tp, None)
            if st is None:
                st = PartitionState(tp)
            elif st.resume_at is not None:
                seeks[tp] = st.resume_at
            self.owned[tp] = st
        # parked partitions that went to another worker: their next owner starts from the committed offset
        self._parked.clear()
        return seeks

    def resumed(self, tp: TopicPartition) -> None:
        """The consumer was sought back to ``tp``'s resume point: its dropped records will come again."""
        st = self.owned.get(tp)
        if st is not None:
            st.resume_at = None

    def to_commit(self) -> dict[TopicPartition, int]:
        """``{tp: offset}`` for every owned partition whose commit point is ahead of its committed offset."""
        out = {}
        for tp, st in self.owned.items():
            point = st.to_commit()
            if point is not None:
                out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            st = self.owned.get(tp)
            if st is not None:
                st.committed = off if st.committed is None else max(st.committed, off)
