"""Per-device summaries over a period, kept as vectors indexed by device slot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.stages import undo
from agent.stages.windows import DeviceIndex, Groups

if TYPE_CHECKING:
    from agent.stages.outputs import Decided, KindSummary


class Summaries:
    """Counts samples, windows, score sum/max, anomalies and episodes per device until
    flushed; ``typed`` adds a typed output kind's own per-device figures (class counts,
    last and worst estimate). Also keeps each device's last score and its highest since
    :meth:`take_recent` (what the console samples), which a flush does not reset."""

    def __init__(self, index: DeviceIndex) -> None:
        self.index = index
        self._alloc(index.capacity)
        index.on_grow.append(self._grow)
        self.typed: KindSummary | None = None
        index.on_evict.append(self._evict)
        # slots given samples since agent.stages.period.snapshot, one array per batch (each
        # distinct, sorted): a window is scored in the batch that brings its last sample, so
        # these are also the slots whose scores changed
        self.touched: list[np.ndarray] = []

    def _alloc(self, n: int) -> None:
        self.count = np.zeros(n, np.int64)
        self.windows = np.zeros(n, np.int64)
        self.anomalies = np.zeros(n, np.int64)
        self.score_sum = np.zeros(n, np.float64)
        self.score_max = np.full(n, -np.inf)
        self.opened = np.zeros(n, np.int64)
        self.closed = np.zeros(n, np.int64)
        self.last = np.full(n, np.nan)
        self.recent = np.full(n, -np.inf)

    _SUMS = ("count", "windows", "anomalies", "score_sum", "opened", "closed")
    _SCORES = ("windows", "anomalies", "score_sum", "score_max", "last", "recent")

    def _grow(self, capacity: int) -> None:
        old = {k: getattr(self, k) for k in self._SUMS}
        old_max, old_last, old_recent = self.score_max, self.last, self.recent
        self._alloc(capacity)
        for k, v in old.items():
            getattr(self, k)[: len(v)] = v
        self.score_max[: len(old_max)] = old_max
        self.last[: len(old_last)] = old_last
        self.recent[: len(old_recent)] = old_recent

    def _evict(self, slots: np.ndarray) -> None:
        self.last[slots], self.recent[slots] = np.nan, -np.inf

    def save(self, slots: np.ndarray) -> undo.Restore:
        """A restore step for a batch touching ``slots`` (see :mod:`agent.stages.undo`); the
        scores' rows are saved by :meth:`add_scores`, in the batches that score."""
        rows = undo.rows(self, ("count", "opened", "closed"), slots)
        typed = self.typed.save(slots) if self.typed is not None else None
        touched = len(self.touched)  # a batch only appends to it

        def restore() -> None:
            rows()
            del self.touched[touched:]
            if typed is not None:
                typed()

        return restore

    def add_samples(self, groups: Groups) -> None:
        self.count[groups.slots] += groups.counts
        self.touched.append(groups.slots)

    def add_scores(
        self,
        slots: np.ndarray,
        scores: np.ndarray,
        anomalous: np.ndarray,
        saves: undo.Undo | None = None,
    ) -> None:
        """Add scored windows; with ``saves``, first a step restoring their rows to it."""
        if saves is not None:
            saves.add(undo.rows(self, self._SCORES, slots))
        np.add.at(self.windows, slots, 1)
        np.add.at(self.anomalies, slots, anomalous.astype(np.int64))
        np.add.at(self.score_sum, slots, scores)
        np.maximum.at(self.score_max, slots, scores)
        self.last[slots] = scores  # repeated slots: NumPy keeps the later window (not promised)
        np.maximum.at(self.recent, slots, scores)

    def take_recent(self) -> np.ndarray:
        """Each slot's highest score since the last call (-inf: none); then reset."""
        out, self.recent = self.recent, np.full(len(self.recent), -np.inf)
        return out

    def add_typed(self, slots: np.ndarray, decided: Decided) -> None:
        if self.typed is not None:
            self.typed.add(slots, decided)

    def flush(self, open_now: np.ndarray | None = None) -> list[dict]:
        """One summary per device that sent samples or had windows scored; then reset.
        ``open_now`` (per slot) adds the episode counts and whether one is open."""
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
        if open_now is not None:
            for rec, o, c, now in zip(
                out,
                self.opened[active].tolist(),
                self.closed[active].tolist(),
                open_now[active].tolist(),
            ):
                rec.update(episodes_opened=o, episodes_closed=c, episode_open=now)
        if self.typed is not None:
            for rec, more in zip(out, self.typed.flush(active)):
                for k in self.typed.replaces:
                    rec.pop(k, None)
                rec.update(more)
        for k in self._SUMS:
            getattr(self, k)[active] = 0
        self.score_max[active] = -np.inf
        self.touched = []
        return out
