"""Per-device online calibration shared by the runtime and the evaluation (pure numpy, no I/O).

A device's first samples are its warm-up. From them the runtime fits a :class:`Normaliser`
(``fit_normaliser``), scores the warm-up windows and derives the anomaly threshold
(``auto_threshold``); both are then frozen. Warm-up windows are never reported as anomalies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABS_FLOOR = 1e-6
REL_FLOOR = 0.01
THRESHOLD_QUANTILE = 1.0
THRESHOLD_FACTOR = 1.05


@dataclass(frozen=True)
class Normaliser:
    """Per-channel affine map ``(x - mean) / scale`` with ``scale > 0``."""

    mean: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x[..., C]`` to float32."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(np.float32)


def fit_normaliser(
    warmup: np.ndarray, rel_floor: float = REL_FLOOR, abs_floor: float = ABS_FLOOR
) -> Normaliser:
    """Fit on ``warmup[n, C]``: mean and standard deviation per channel.

    The scale is floored at ``max(rel_floor * |mean|, abs_floor)``, so constant channels stay
    finite and a slow drift smaller than ~1 % of a channel's operating level is not amplified.
    """
    x = np.asarray(warmup, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"warm-up must be [n>=2, channels], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("warm-up contains NaN or infinite values")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), np.maximum(rel_floor * np.abs(mean), abs_floor))
    return Normaliser(mean, scale)


def auto_threshold(
    warmup_scores: np.ndarray,
    quantile: float = THRESHOLD_QUANTILE,
    factor: float = THRESHOLD_FACTOR,
) -> float:
    """``threshold: auto`` = ``factor * quantile(warmup_scores, quantile)``.

    With the defaults: 5 % above the highest warm-up window score. A score strictly above the
    threshold is an anomaly.
    """
    s = np.asarray(warmup_scores, np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("auto threshold needs at least one finite warm-up score")
    if not 0.0 < quantile <= 1.0 or factor <= 0:
        raise ValueError(f"need 0 < quantile <= 1 and factor > 0, got {quantile}, {factor}")
    return float(factor * np.quantile(s, quantile))


TAIL_QUANTILE = 0.98  # scores above this level of the warm-up form the fitted tail
MIN_PEAKS = 10  # fewest tail scores a generalised Pareto fit is made from
MIN_BUDGET_WINDOWS = 500  # warm-up windows giving MIN_PEAKS above TAIL_QUANTILE


def gpd_fit(excess: np.ndarray) -> tuple[float, float]:
    """Shape ``xi`` and scale ``sigma`` of a generalised Pareto fitted to ``excess`` (> 0) by
    probability-weighted moments (Hosking and Wallis 1987); ``xi`` kept in [-0.5, 0.5]."""
    y = np.sort(np.asarray(excess, np.float64))
    n = len(y)
    b0 = y.mean()
    b1 = float(np.sum(y * (np.arange(n) / max(n - 1, 1)))) / n
    denom = b0 - 2 * b1
    if denom <= 0 or b0 <= 0:
        return 0.0, max(b0, 1e-12)
    k = b0 / denom - 2  # Hosking's shape; xi = -k
    sigma = 2 * b0 * b1 / denom
    xi = float(np.clip(-k, -0.5, 0.5))
    return xi, max(sigma, 1e-12)


def budget_threshold(warmup_scores: np.ndarray, exceed_prob: float) -> float:
    """The score that a window like the warm-up exceeds with probability ``exceed_prob``.

    Within the warm-up's range this is the empirical quantile; beyond it the tail above the
    98 % quantile is extrapolated with a generalised Pareto fit (peaks over threshold, as in
    SPOT, Siffer et al., KDD 2017): ``t + sigma/xi * ((p n / N_t)^-xi - 1)``. Never below the
    highest warm-up score when the budget is rarer than the warm-up can show.
    """
    s = np.sort(np.asarray(warmup_scores, np.float64).ravel())
    n = len(s)
    if n == 0 or not np.isfinite(s).all():
        raise ValueError("budget threshold needs finite warm-up scores")
    if not 0 < exceed_prob < 1:
        raise ValueError(f"exceedance probability must be in (0, 1), got {exceed_prob}")
    peaks = max(MIN_PEAKS, int(np.ceil((1 - TAIL_QUANTILE) * n)))
    if peaks >= n or exceed_prob * n >= peaks:
        return float(np.quantile(s, 1 - exceed_prob))
    t = s[n - peaks - 1]
    xi, sigma = gpd_fit(s[n - peaks :] - t)
    r = exceed_prob * n / peaks
    level = t - sigma * np.log(r) if abs(xi) < 1e-6 else t + sigma / xi * (r**-xi - 1)
    return float(max(level, s[-1]))
