"""Per-device summaries over a period, kept as vectors indexed by device slot."""

from __future__ import annotations

import numpy as np

from .windows import DeviceIndex, Groups


class Summaries:
    """Counts samples, windows, score sum/max and anomalies per device until flushed."""

    def __init__(self, index: DeviceIndex) -> None:
        self.index = index
        self._alloc(index.capacity)
        index.on_grow.append(self._grow)
        self.touched: list[np.ndarray] = []  # slots changed since agent.period.snapshot

    def _alloc(self, n: int) -> None:
        self.count = np.zeros(n, np.int64)
        self.windows = np.zeros(n, np.int64)
        self.anomalies = np.zeros(n, np.int64)
        self.score_sum = np.zeros(n, np.float64)
        self.score_max = np.full(n, -np.inf)

    def _grow(self, capacity: int) -> None:
        old = {k: getattr(self, k) for k in ("count", "windows", "anomalies", "score_sum")}
        old_max = self.score_max
        self._alloc(capacity)
        for k, v in old.items():
            getattr(self, k)[: len(v)] = v
        self.score_max[: len(old_max)] = old_max

    def add_samples(self, groups: Groups) -> None:
        self.count[groups.slots] += groups.counts
        self.touched.append(groups.slots)

    def add_scores(self, slots: np.ndarray, scores: np.ndarray, anomalous: np.ndarray) -> None:
        np.add.at(self.windows, slots, 1)
        np.add.at(self.anomalies, slots, anomalous.astype(np.int64))
        np.add.at(self.score_sum, slots, scores)
        np.maximum.at(self.score_max, slots, scores)
        self.touched.append(slots)

    def flush(self) -> list[dict]:
        """One summary per device that sent samples or had windows scored; then reset."""
        active = np.flatnonzero((self.count > 0) | (self.windows > 0))
        out = []
        names = self.index.names
        for s, c, w, a, tot, mx in zip(
            active.tolist(),
            self.count[active].tolist(),
            self.windows[active].tolist(),
            self.anomalies[active].tolist(),
            self.score_sum[active].tolist(),
            self.score_max[active].tolist(),
        ):
            out.append(
                {
                    "device": names[s],
                    "count": c,
                    "windows": w,
                    "mean": tot / w if w else None,
                    "max": mx if w else None,
                    "anomalies": a,
                }
            )
        self.count[active] = 0
        self.windows[active] = 0
        self.anomalies[active] = 0
        self.score_sum[active] = 0
        self.score_max[active] = -np.inf
        self.touched = []
        return out
