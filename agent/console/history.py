"""Per-device score and threshold history for the console: one ring per pipeline.

Every :data:`TICK` seconds (the agent's scheduler, under the pipeline's lock) the ring takes
each device's highest window score since the previous tick and its threshold at that time:
two float32 per device per tick, so ``history / TICK x 8`` bytes per device. The ring is
``points x devices`` with one shared time row; the devices it covers are capped so the two
arrays stay within the byte budget (slots beyond it have no chart). Nothing here runs per
message or per batch.
"""

from __future__ import annotations

import numpy as np

from agent.stages.windows import DeviceIndex

TICK = 2.0  # s between history samples (and the console's polling period)
BYTES_PER_POINT = 8  # float32 score + float32 threshold


class History:
    """Score and threshold of a pipeline's devices every :data:`TICK` s over ``span`` s."""

    def __init__(self, span: float, budget_bytes: float) -> None:
        self.points = max(2, round(span / TICK))
        self.max_devices = max(1, int(budget_bytes // (self.points * BYTES_PER_POINT)))
        self.times = np.full(self.points, np.nan)
        self.score = np.full((self.points, 0), np.nan, np.float32)
        self.threshold = np.full((self.points, 0), np.nan, np.float32)
        self.next = 0  # ring position of the next sample
        self.index: DeviceIndex | None = None

    @property
    def nbytes(self) -> int:
        return self.score.nbytes + self.threshold.nbytes + self.times.nbytes

    def _attach(self, index: DeviceIndex) -> None:
        """Follow a new device index (a reload that dropped the windows): start afresh."""
        self.index = index
        self.times[:] = np.nan
        self.score = np.full((self.points, 0), np.nan, np.float32)
        self.threshold = np.full((self.points, 0), np.nan, np.float32)
        index.on_evict.append(self._evict)

    def _evict(self, slots: np.ndarray) -> None:
        """A freed slot may go to another device: its history goes with the old one."""
        slots = slots[slots < self.score.shape[1]]
        self.score[:, slots] = np.nan
        self.threshold[:, slots] = np.nan

    def _widen(self, width: int) -> None:
        old = self.score.shape[1]
        if width <= old:
            return
        score = np.full((self.points, width), np.nan, np.float32)
        threshold = np.full((self.points, width), np.nan, np.float32)
        score[:, :old], threshold[:, :old] = self.score, self.threshold
        self.score, self.threshold = score, threshold

    def sample(
        self, index: DeviceIndex, recent: np.ndarray, thresholds: np.ndarray, now: float
    ) -> None:
        """One tick: ``recent`` (highest score per slot since the last tick, -inf: none) and
        ``thresholds`` per slot, at wall time ``now``. The caller holds the pipeline lock."""
        if index is not self.index:
            self._attach(index)
        width = min(index.capacity, self.max_devices)
        self._widen(width)
        recent = recent[:width]
        scored = np.isfinite(recent)
        k = self.next
        self.times[k] = now
        self.score[k, :width] = np.where(scored, recent, np.nan)
        self.threshold[k, :width] = np.where(scored, thresholds[:width], np.nan)
        self.score[k, width:] = self.threshold[k, width:] = np.nan
        self.next = (k + 1) % self.points

    def series(self, slot: int) -> dict[str, list] | None:
        """The slot's points, oldest first (ticks where it had no window left out); None when
        the slot is beyond the budget."""
        if slot >= self.score.shape[1]:
            return None
        order = np.roll(np.arange(self.points), -self.next)
        t, s, thr = self.times[order], self.score[order, slot], self.threshold[order, slot]
        keep = np.isfinite(t) & np.isfinite(s)
        return {
            "t": np.round(t[keep], 2).tolist(),
            "score": np.round(s[keep].astype(np.float64), 4).tolist(),
            "threshold": np.round(thr[keep].astype(np.float64), 4).tolist(),
        }
