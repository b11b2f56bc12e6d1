"""Sequence numbers per device: gaps (samples missing upstream of the agent) and repeats
(a sample sent again, or a counter that went backwards, e.g. after a device restart)."""

from __future__ import annotations

import numpy as np

from agent.stages import undo
from agent.stages.windows import DeviceIndex


class Sequences:
    """The last ``seq`` of each device slot; counts ``seq_gap`` and ``seq_repeat``.

    A sample without a sequence number (``-1``) is not compared. A gap is counted once per
    jump (not per missing number); a repeat once per sample at or below the last one.
    """

    def __init__(self, index: DeviceIndex) -> None:
        self.last = np.full(index.capacity, -1, np.int64)
        self.gap = 0
        self.repeat = 0
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _grow(self, capacity: int) -> None:
        old = self.last
        self.last = np.full(capacity, -1, np.int64)
        self.last[: len(old)] = old

    def _evict(self, slots: np.ndarray) -> None:
        self.last[slots] = -1

    def save(self, slots: np.ndarray) -> undo.Restore:
        last, totals = self.last[slots], (self.gap, self.repeat)  # advanced indexing: a copy

        def restore() -> None:
            self.last[slots] = last  # looked up now: a grown index replaced the array
            self.gap, self.repeat = totals

        return restore

    def observe(self, slots: np.ndarray, seq: np.ndarray, distinct: bool = False) -> None:
        """Compare each sample's ``seq`` with its device's previous one (arrival order).
        ``distinct``: no two samples share a slot (``Groups`` knows), so no sort is needed."""
        has = seq >= 0
        kept = np.count_nonzero(has)  # cheaper than has.all() and has.any()
        if kept == len(has):
            s, q = slots, seq
        elif kept:
            s, q = slots[has], seq[has]
        else:
            return
        if distinct:  # the common case of small batches: each sample's previous is `last`
            prev = self.last[s]
            self._count(q, prev)
            self.last[s] = q
            return
        order = np.argsort(s, kind="stable")
        s, q = s[order], q[order]
        first = np.ones(len(s), bool)
        np.not_equal(s[1:], s[:-1], out=first[1:])
        prev = np.empty_like(q)
        prev[1:] = q[:-1]
        prev[first] = self.last[s[first]]
        self._count(q, prev)
        ends = np.flatnonzero(np.append(first[1:], True))
        self.last[s[ends]] = q[ends]

    def _count(self, q: np.ndarray, prev: np.ndarray) -> None:
        """``prev`` -1: no earlier seq, below every ``q`` here (never a repeat, not a gap)."""
        self.gap += int(np.count_nonzero((q > prev + 1) & (prev >= 0)))
        self.repeat += int(np.count_nonzero(q <= prev))

    def stats(self) -> dict[str, int]:
        return {"seq_gap": self.gap, "seq_repeat": self.repeat}
