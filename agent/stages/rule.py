"""The threshold rule's hold: a device's anomaly stays open for a few windows after its score
falls back to the threshold.

A window is *over* when ``score > threshold``. With ``hold: h`` a window is anomalous when it,
or one of its device's ``h`` previous scored windows, is over: an anomaly opens on the first
over window and closes on the ``h + 1``-th consecutive window that is not over. ``hold: 0``
is the plain rule. Per-device state (windows since the last over window) lives in arrays
indexed by device slot, so a batch is processed with numpy alone and one batch of N windows
gives what N batches of one give.
"""

from __future__ import annotations

import numpy as np

from agent.stages import undo
from agent.stages.windows import DeviceIndex

_CLOSED = np.iinfo(np.int64).max // 2  # windows since the last over window: never over


def over(severity: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """The rule's test of scored windows: over when the severity (a score, or a typed kind's
    severity) exceeds the window's threshold; a NaN threshold is never exceeded."""
    return severity > threshold


class Hold:
    """Per-device hold state of the threshold rule, indexed by device slot."""

    def __init__(self, index: DeviceIndex, hold: int) -> None:
        if hold < 0:
            raise ValueError(f"hold must be >= 0, got {hold}")
        self.hold = hold
        self.since = np.full(index.capacity, _CLOSED, np.int64)
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _grow(self, cap: int) -> None:
        old = self.since
        self.since = np.full(cap, _CLOSED, np.int64)
        self.since[: len(old)] = old

    def _evict(self, slots: np.ndarray) -> None:
        self.since[slots] = _CLOSED

    def save(self, slots: np.ndarray) -> undo.Restore:
        return undo.rows(self, ("since",), slots)

    def apply(self, slots: np.ndarray, over: np.ndarray) -> np.ndarray:
        """Anomalous flags of scored windows (``slots[k]``, ``over[k]``, each device's windows
        in time order); updates each device's state."""
        n = len(slots)
        if n == 0:
            return np.zeros(0, bool)
        order = np.argsort(slots, kind="stable")
        s, o = slots[order], over[order]
        pos = np.arange(n)
        first = np.empty(n, bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        start = np.maximum.accumulate(np.where(first, pos, 0))  # each window's group start
        last = np.maximum.accumulate(np.where(o, pos, -1))  # latest over window so far
        inside = last >= start  # an over window of this device earlier in the batch
        since = np.where(inside, pos - last, self.since[s] + (pos - start + 1))
        ends = np.append(np.flatnonzero(first[1:]), n - 1)
        self.since[s[ends]] = np.minimum(since[ends], _CLOSED)
        out = np.empty(n, bool)
        out[order] = since <= self.hold
        return out
