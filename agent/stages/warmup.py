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

Memory: ``devices x samples x channels x 4`` bytes for the warm-up buffer, allocated only when
calibration is configured.
"""

from __future__ import annotations

import numpy as np

from agent import log
from agent.config import CalibrationConfig
from agent.protocols import PerDevice
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
        self._alloc(index.capacity)
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _alloc(self, cap: int) -> None:
        self.count = np.zeros(cap, np.int64)
        self.buf = np.zeros((cap, self.n, self.channels), np.float32)
        self.mean = np.zeros((cap, self.channels), np.float64)
        self.scale = np.ones((cap, self.channels), np.float64)
        self.threshold = np.full(cap, self.fixed, np.float64)
        self.first_ts = np.zeros(cap, np.float64)
        self.last_ts = np.zeros(cap, np.float64)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.count,
            self.buf,
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
        self.count[slots] = 0
        self.mean[slots], self.scale[slots], self.threshold[slots] = 0, 1, self.fixed

    def push(
        self,
        slots: np.ndarray,
        values: np.ndarray,
        groups: Groups,
        handler,
        ts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Record warm-up samples (and their times); fit devices that complete it. Returns,
        per sample, whether its device was calibrated before it (its windows may be scored)."""
        pos = self.count[slots] + groups.rank
        self.count[groups.slots] += groups.counts
        warm = pos < self.n
        if warm.any():
            self.buf[slots[warm], pos[warm]] = values[warm]
            if ts is not None:
                first = warm & (pos == 0)
                self.first_ts[slots[first]] = ts[first]
                self.last_ts[slots[warm]] = ts[warm]
            done = np.unique(slots[pos == self.n - 1])
            if len(done):
                self._fit(done, handler)
        return ~warm

    def _fit(self, slots: np.ndarray, handler) -> None:
        rows = self.buf[slots]  # [k, n, C]
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
