"""Episodes: a device's anomalous windows become one condition with an onset and a clearing.

Per device a small state machine (ISA-18.2 style on-delay, deadband and off-delay):

- *idle*: ``open_after`` consecutive windows over the threshold open an episode; its onset
  is the first of them. During a ``cooldown`` after a close, over windows do not count.
- *open*: every window updates the peak; a window over ``severity.critical x threshold``
  escalates the episode once; with ``repeat`` an ``ongoing`` reminder is due that often.
  ``clear_after`` consecutive windows at or below ``clear x threshold`` close it (the
  episode's end is the last window above that level).

State lives in arrays indexed by device slot. A batch touches Python only for the windows of
devices that are open, pending, or have a window over the threshold in the batch (rare in
healthy operation); every other device is left as it is, which is exactly what the state
machine would do. So one batch of N windows gives what N batches of one give.

The flood guard counts openings per pipeline in a sliding period of sample time; beyond the
limit an opening is *suppressed*: the episode is tracked (so it neither reopens nor closes
noisily) but sends no events, and one ``flood`` transition reports the burst.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agent.config import RuleConfig
from agent.stages import undo
from agent.stages.rule import over as rule_over
from agent.stages.windows import DeviceIndex

OPENED, ONGOING, ESCALATED, CLOSED, FLOOD = "opened", "ongoing", "escalated", "closed", "flood"
LEVELS = ("warning", "critical")


@dataclass(slots=True)
class Transition:
    """One episode event: ``kind`` with the window ``index`` in the batch (-1: none) that
    caused it, the device ``slot`` (-1 for ``flood``) and its payload fields."""

    kind: str
    index: int
    slot: int
    fields: dict = field(default_factory=dict)


class Episodes:
    """Per-device episode state of one pipeline, indexed by device slot."""

    # one array per ``_FIELDS`` entry, set by ``_alloc``/``_grow``
    run: np.ndarray
    onset: np.ndarray
    open: np.ndarray
    muted: np.ndarray
    below: np.ndarray
    end: np.ndarray
    peak: np.ndarray
    peak_ts: np.ndarray
    windows: np.ndarray
    level: np.ndarray
    reminded: np.ndarray
    quiet_until: np.ndarray
    threshold: np.ndarray

    def __init__(self, index: DeviceIndex, rule: RuleConfig) -> None:
        self.index = index
        self.rule = rule
        self._alloc(index.capacity)
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)
        self.ids: dict[int, str] = {}  # slot -> episode id of its open episode
        self.openings: deque[float] = deque()  # sample times of recent openings (flood guard)
        self.flooding = False
        self.opened = self.closed = self.suppressed = 0
        self.pending: list[Transition] = []  # closes caused outside ``step`` (eviction)

    _FIELDS = {
        "run": (np.int64, 0),  # consecutive over windows while idle
        "onset": (np.float64, 0.0),
        "open": (np.bool_, False),
        "muted": (np.bool_, False),  # opened while the flood guard suppressed openings
        "below": (np.int64, 0),  # consecutive windows at or below the clear level while open
        "end": (np.float64, 0.0),  # last window above the clear level
        "peak": (np.float64, -np.inf),
        "peak_ts": (np.float64, 0.0),
        "windows": (np.int64, 0),
        "level": (np.int8, 0),
        "reminded": (np.float64, 0.0),
        "quiet_until": (np.float64, -np.inf),  # cooldown
        "threshold": (np.float64, np.nan),
    }

    def _alloc(self, cap: int) -> None:
        for name, (dtype, fill) in self._FIELDS.items():
            setattr(self, name, np.full(cap, fill, dtype))

    def _grow(self, cap: int) -> None:
        for name, (dtype, fill) in self._FIELDS.items():
            old = getattr(self, name)
            new: np.ndarray = np.full(cap, fill, dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _evict(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            if self.open[s]:
                self.pending.append(self._close(s, -1, float(self.end[s]), "idle"))
        for name, (_, fill) in self._FIELDS.items():
            getattr(self, name)[slots] = fill

    def save(self, slots: np.ndarray) -> undo.Restore:
        """A restore step for a batch touching ``slots`` (open episodes' ids, flood guard
        and totals included)."""
        names = ("ids", "openings", "flooding", "opened", "closed", "suppressed", "pending")
        state, totals = undo.rows(self, self._FIELDS, slots), undo.values(self, names)
        return undo.chain(state, totals)

    def open_count(self) -> int:
        return int(self.open.sum())

    def step(
        self, slots: np.ndarray, ts: np.ndarray, scores: np.ndarray, thresholds: np.ndarray
    ) -> list[Transition]:
        """Advance the devices of scored windows (each device's in time order)."""
        over = rule_over(scores, thresholds)
        busy = self.open | (self.run > 0)
        if not over.any() and not busy[slots].any():
            return []
        busy = busy.copy()
        busy[slots[over]] = True
        out: list[Transition] = []
        for i in np.flatnonzero(busy[slots]).tolist():
            s = int(slots[i])
            if self.open[s]:
                self._advance(s, i, float(ts[i]), float(scores[i]), float(thresholds[i]), out)
            else:
                self._pending(s, i, float(ts[i]), float(scores[i]), float(thresholds[i]), out)
        return out

    def _pending(self, s: int, i: int, t: float, score: float, thr: float, out: list) -> None:
        if not score > thr or t < self.quiet_until[s]:
            self.run[s] = 0
            return
        self.run[s] += 1
        if self.run[s] == 1:
            self.onset[s], self.peak[s], self.peak_ts[s], self.windows[s] = t, score, t, 0
        elif score > self.peak[s]:
            self.peak[s], self.peak_ts[s] = score, t
        self.windows[s] += 1
        if self.run[s] < self.rule.open_after:
            return
        self.run[s] = 0
        self.open[s], self.below[s], self.end[s], self.reminded[s] = True, 0, t, t
        self.threshold[s] = thr
        critical = self.rule.severity.critical
        self.level[s] = int(critical is not None and score > critical * thr)
        self.muted[s] = self._flood_guard(t, out)
        if self.muted[s]:
            self.suppressed += 1
            return
        self.opened += 1
        out.append(Transition(OPENED, i, s, {"onset": float(self.onset[s]), **self._level(s)}))

    def _flood_guard(self, t: float, out: list) -> bool:
        """Whether an opening at sample time ``t`` is suppressed; emits ``flood`` once per
        burst."""
        flood = self.rule.flood
        if flood is None:
            return False
        while self.openings and self.openings[0] <= t - flood.period:
            self.openings.popleft()
        if len(self.openings) < flood.limit:
            self.openings.append(t)
            self.flooding = False
            return False
        if not self.flooding:
            self.flooding = True
            out.append(
                Transition(
                    FLOOD,
                    -1,
                    -1,
                    {"limit": flood.limit, "period": flood.period, "opened": len(self.openings)},
                )
            )
        return True

    def _advance(self, s: int, i: int, t: float, score: float, thr: float, out: list) -> None:
        self.windows[s] += 1
        if score > self.peak[s]:
            self.peak[s], self.peak_ts[s] = score, t
        if score > self.rule.clear * thr:
            self.below[s], self.end[s] = 0, t
        else:
            self.below[s] += 1
            if self.below[s] >= self.rule.clear_after:
                closed = self._close(s, i, t, "cleared")
                if closed.kind:
                    out.append(closed)
                return
        if self.muted[s]:
            return
        critical = self.rule.severity.critical
        if critical is not None and self.level[s] == 0 and score > critical * thr:
            self.level[s] = 1
            out.append(Transition(ESCALATED, i, s, self._level(s)))
        repeat = self.rule.repeat
        if repeat is not None and t - self.reminded[s] >= repeat:
            self.reminded[s] = t
            out.append(Transition(ONGOING, i, s, self._level(s)))

    def _level(self, s: int) -> dict:
        return {"severity": LEVELS[int(self.level[s])]}

    def _close(self, s: int, i: int, t: float, reason: str) -> Transition:
        """Close slot ``s``'s episode; a muted episode closes silently (empty ``kind``)."""
        fields = {
            "start": float(self.onset[s]),
            "end": float(self.end[s]),
            "duration": float(self.end[s] - self.onset[s]),
            "windows": int(self.windows[s]),
            "peak": float(self.peak[s]),
            "peak_ts": float(self.peak_ts[s]),
            "threshold": float(self.threshold[s]),
            **self._level(s),
            "reason": reason,
            "closed_at": t,
        }
        muted = bool(self.muted[s])
        self.open[s], self.muted[s], self.run[s], self.below[s] = False, False, 0, 0
        cooldown = self.rule.cooldown
        self.quiet_until[s] = t + cooldown if cooldown is not None else -np.inf
        if muted:
            return Transition("", i, s, fields)
        self.closed += 1
        return Transition(CLOSED, i, s, fields)

    def close_all(self, reason: str) -> list[Transition]:
        """Close every open episode (stop, or a reload that drops the windows)."""
        out = []
        for s in np.flatnonzero(self.open).tolist():
            closed = self._close(s, -1, float(self.end[s]), reason)
            if closed.kind:
                out.append(closed)
        return out

    def reset(self, slots: list[int], ts: list[float]) -> list[Transition]:
        """A device restarted (maintenance): its open episode closes (reason ``reset``),
        a pending opening is forgotten and no cooldown follows."""
        out = []
        for s, t in zip(slots, ts):
            if self.open[s]:
                closed = self._close(s, -1, t, "reset")
                if closed.kind:
                    out.append(closed)
            self.run[s], self.quiet_until[s] = 0, -np.inf
        return out

    def take_pending(self) -> list[Transition]:
        out, self.pending = [t for t in self.pending if t.kind], []
        return out
