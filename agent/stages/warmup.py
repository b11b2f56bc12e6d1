"""Online calibration: each device's first samples fit its normaliser and threshold.

A device's first ``samples`` values are its warm-up. When they are complete the stage fits
the device's :class:`agent.stages.calibration.Normaliser`, scores every hop-1 window inside the
warm-up (one handler call for all devices finishing in the batch) and sets the device's
threshold with :func:`agent.stages.calibration.auto_threshold` (or, with
``false_alarms_per_day``, :func:`agent.stages.calibration.budget_threshold` at the exceedance
probability that budget allows at the device's own window rate); both are then frozen. Windows that
end inside the warm-up are not scored, so the warm-up never raises events. Windows are kept
raw and normalised when they are scored.

A handler with ``fit_devices(slots, warmup)`` (a per-device baseline) is fitted on the
warm-up too and scores with ``infer_devices(slots, windows)``.

Memory: only devices still warming up hold a warm-up buffer (``samples x channels x 4`` bytes
each), taken from a pool of ``calibration.max_warmup_mb`` when a device's first sample arrives
and given back when its warm-up completes. The pool is reserved at start (``np.zeros``: its
pages become resident only once written, and it never grows, so nothing is copied). A new
device that finds the pool full waits: its samples are counted as ``warmup_deferred`` (in
stats and metrics, logged as ``warmup_budget_full`` at most every 10 s) and its windows are
not scored until a buffer is free and its own warm-up has completed. Every tracked device
also keeps ``16 x channels + 48`` bytes of calibration state (see docs/performance.md).
"""

from __future__ import annotations

import numpy as np

from agent import log
from agent.config import CalibrationConfig
from agent.protocols import PerDevice
from agent.stages import undo
from agent.stages.calibration import auto_threshold, budget_threshold, fit_normaliser
from agent.stages.windows import DeviceIndex, Groups

DAY = 86400.0
# A threshold fitted on one warm-up is itself a noisy estimate, and a device whose estimate
# came out low pays more than one whose came out high: aim at half the budget (measured in
# docs/alarms.md: 20 devices x 24 h gave 1.25 openings per device-day for a budget of 1).
BUDGET_HEADROOM = 2.0


class Warmup:
    """Per-device warm-up buffers, normalisers and thresholds, indexed by device slot."""

    def __init__(
        self,
        index: DeviceIndex,
        config: CalibrationConfig,
        window: int,
        channels: int,
        auto: bool,
        fixed_threshold: float,
        hop: int = 1,
    ) -> None:
        self.config, self.window, self.auto, self.hop = config, window, auto, hop
        self.n, self.channels = config.warmup, channels
        self.fixed = fixed_threshold
        self.log = log.get(component="warmup")
        self._warned = False
        self._limit = log.RateLimit(10.0)
        self.row_bytes = self.n * channels * 4
        budget = int(config.max_warmup_mb * (1 << 20)) // self.row_bytes
        rows = max(1, min(budget, index.max_devices))
        self.buf = np.zeros((rows, self.n, channels), np.float32)  # pages resident on write
        self.free = list(range(rows - 1, -1, -1))  # pool rows not held by a device
        self.deferred = 0  # samples of new devices that waited for a free buffer
        self._alloc(index.capacity)
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _alloc(self, cap: int) -> None:
        self.count = np.zeros(cap, np.int64)
        self.row = np.full(cap, -1, np.int64)  # each device's pool row while it warms up
        self.mean = np.zeros((cap, self.channels), np.float64)
        self.scale = np.ones((cap, self.channels), np.float64)
        self.threshold = np.full(cap, self.fixed, np.float64)
        self.first_ts = np.zeros(cap, np.float64)
        self.last_ts = np.zeros(cap, np.float64)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.count,
            self.row,
            self.mean,
            self.scale,
            self.threshold,
            self.first_ts,
            self.last_ts,
        )

    def _grow(self, cap: int) -> None:
        old = self._arrays()
        self._alloc(cap)
        for new, prev in zip(self._arrays(), old):
            new[: len(prev)] = prev

    def _evict(self, slots: np.ndarray) -> None:
        self._release(slots)
        self.count[slots] = 0
        self.mean[slots], self.scale[slots], self.threshold[slots] = 0, 1, self.fixed

    _PER_SLOT = ("count", "row", "mean", "scale", "threshold", "first_ts", "last_ts")

    def save(self, slots: np.ndarray) -> undo.Restore:
        """A restore step for a batch touching ``slots`` (see :mod:`agent.stages.undo`). The
        buffer is only written past a device's count, so restoring counts undoes it."""
        state = undo.rows(self, self._PER_SLOT, slots)
        if not (self.count[slots] < self.n).any():  # all calibrated: the pool is untouched
            return state
        pool = undo.values(self, ("free", "deferred"))
        return undo.chain(state, pool)

    def _take(self, slots: np.ndarray) -> None:
        """Pool rows for devices starting their warm-up, while any are free."""
        k = min(len(slots), len(self.free))
        if k:
            self.row[slots[:k]] = [self.free.pop() for _ in range(k)]

    def _release(self, slots: np.ndarray) -> None:
        held = slots[self.row[slots] >= 0]
        self.free += self.row[held].tolist()
        self.row[held] = -1

    def _defer(self, samples: int, devices: int) -> None:
        self.deferred += samples
        if self._limit.allow("budget"):
            self.log.warning(
                "warmup_budget_full",
                devices_waiting=devices,
                devices_warming=len(self.buf) - len(self.free),
                max_warmup_mb=self.config.max_warmup_mb,
                bytes_per_device=self.row_bytes,
                reason="new devices wait for a warm-up buffer (their windows are not scored "
                "meanwhile); raise calibration.max_warmup_mb to calibrate more at once",
            )

    def push(
        self,
        slots: np.ndarray,
        values: np.ndarray,
        groups: Groups,
        handler,
        ts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Record warm-up samples (and their times); fit devices that complete it. Returns,
        per sample, whether its device was calibrated before it (its windows may be scored).
        A device without a warm-up buffer (the pool is full) is not calibrated, and its
        samples do not count towards its warm-up."""
        count, row = self.count, self.row
        own = groups.slots
        start = own[(count[own] < self.n) & (row[own] < 0)]
        if len(start):
            self._take(start)
        live = (count[own] >= self.n) | (row[own] >= 0)
        if not live.all():
            waiting = own[~live]
            self._defer(int(groups.counts[~live].sum()), len(waiting))
        pos = count[slots] + groups.rank
        ok = (count[slots] >= self.n) | (row[slots] >= 0)
        count[own[live]] += groups.counts[live]
        warm = ok & (pos < self.n)
        if warm.any():
            self.buf[row[slots[warm]], pos[warm]] = values[warm]
            if ts is not None:
                first = warm & (pos == 0)
                self.first_ts[slots[first]] = ts[first]
                self.last_ts[slots[warm]] = ts[warm]
            done = np.unique(slots[warm & (pos == self.n - 1)])
            if len(done):
                self._fit(done, handler)
                self._release(done)
        return ok & ~warm

    def stats(self) -> dict[str, int]:
        return {"warmup_deferred": self.deferred}

    def _fit(self, slots: np.ndarray, handler) -> None:
        rows = self.buf[self.row[slots]]  # [k, n, C]
        budget = self.config.false_alarms_per_day
        if self.auto and budget is not None:
            # Scores of data the fit has not seen: a fit scores its own warm-up lower than
            # what follows, and a budget lives in the tail where that bias counts most.
            half = self.n // 2
            scores = np.concatenate(
                [
                    self._fit_and_score(slots, handler, rows[:, :half], rows[:, half:]),
                    self._fit_and_score(slots, handler, rows[:, half:], rows[:, :half]),
                ],
                axis=1,
            )
        self._fit_rows(slots, handler, rows)
        if not self.auto:
            return
        if budget is None:
            scores = self._scores(slots, handler, rows)
        for i, s in enumerate(slots.tolist()):
            if budget is None:
                self.threshold[s] = auto_threshold(
                    scores[i], quantile=self.config.quantile, factor=self.config.factor
                )
            else:
                self.threshold[s] = budget_threshold(scores[i], self._exceed_prob(s, budget))

    def _fit_rows(self, slots: np.ndarray, handler, rows: np.ndarray) -> None:
        """Fit each device's normaliser (and a per-device handler) on ``rows[k, m, C]``."""
        for i, s in enumerate(slots.tolist()):
            norm = fit_normaliser(rows[i], rel_floor=self.config.rel_floor)
            self.mean[s], self.scale[s] = norm.mean, norm.scale
        if isinstance(handler, PerDevice):
            handler.fit_devices(slots, self.normalise(slots, rows))

    def _scores(self, slots: np.ndarray, handler, rows: np.ndarray) -> np.ndarray:
        """Scores ``[k, m - window + 1]`` of every hop-1 window of ``rows[k, m, C]``."""
        span = rows.shape[1] - self.window + 1
        starts = np.arange(span)[:, None] + np.arange(self.window)
        windows = rows[:, starts]  # [k, span, window, C]
        owner = np.repeat(slots, span)
        flat = self.normalise(owner, windows.reshape(-1, self.window, self.channels))
        return np.asarray(_score(handler, owner, flat), np.float64).reshape(len(slots), span)

    def _fit_and_score(
        self, slots: np.ndarray, handler, fit: np.ndarray, held: np.ndarray
    ) -> np.ndarray:
        self._fit_rows(slots, handler, fit)
        return self._scores(slots, handler, held)

    def _exceed_prob(self, slot: int, budget: float) -> float:
        """Per-window probability that keeps openings within ``budget`` a day at this
        device's window rate (every window over the threshold counted as an opening, so
        ``open_after`` and ``clear_after`` only lower the rate), with ``BUDGET_HEADROOM``."""
        span = self.last_ts[slot] - self.first_ts[slot]
        rate = (self.n - 1) / span if span > 0 else 1.0  # samples/s; 1 Hz if unstamped
        per_day = DAY * rate / self.hop
        p = min(budget / per_day / BUDGET_HEADROOM, 0.5)
        windows = 2 * (self.n // 2 - self.window + 1)  # the held-out scores fitted
        if not self._warned and p * windows < 1e-3:
            self._warned = True
            need = int(np.ceil(1e-3 / p)) + 2 * (self.window - 1)  # both halves
            self.log.warning(
                "warmup_short_for_budget",
                warmup=self.n,
                minimum=need,
                windows_per_day=round(per_day),
                reason=f"a budget of {budget}/day at {per_day:.0f} windows/day extrapolates "
                f"more than 1000x beyond {windows} warm-up windows; use calibration.warmup "
                f">= {need} samples (about {need / rate / 3600:.1f} h at this device's rate)",
            )
        return p

    def normalise(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """``(windows - mean) / scale`` with each window's device parameters."""
        if not self.config.normalise:
            return windows
        return ((windows - self.mean[slots, None, :]) / self.scale[slots, None, :]).astype(
            np.float32
        )

    def score(self, handler, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Scores of calibrated devices' windows, normalised per device."""
        return _score(handler, slots, self.normalise(slots, windows))


def _score(handler, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
    if isinstance(handler, PerDevice):
        return handler.infer_devices(slots, windows)
    return handler.infer(windows)
