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
