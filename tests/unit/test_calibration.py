"""Per-device warm-up calibration: normaliser and the 'threshold: auto' rule."""

from __future__ import annotations

import numpy as np
import pytest

from agent.stages.calibration import auto_threshold, fit_normaliser


def test_normaliser_standardises():
    """Warm-up rows map to mean 0 and standard deviation 1 per channel, as float32."""
    rng = np.random.default_rng(0)
    x = rng.normal([5.0, -3.0], [2.0, 0.5], size=(400, 2))
    z = fit_normaliser(x).apply(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


def test_constant_and_drifting_channels_stay_finite():
    """A constant channel gets the relative floor (1 % of its level) or the absolute floor."""
    x = np.column_stack([np.full(100, 50.0), np.zeros(100), np.linspace(0, 1, 100)])
    norm = fit_normaliser(x)
    assert norm.scale[0] == pytest.approx(0.5)
    assert norm.scale[1] > 0
    assert np.isfinite(norm.apply(x + 1)).all()


def test_normaliser_rejects_bad_warmup():
    """Too few rows, wrong rank or NaN raise ValueError."""
    for bad in (np.zeros((1, 3)), np.zeros(10), np.array([[1.0], [np.nan]])):
        with pytest.raises(ValueError):
            fit_normaliser(bad)


def test_auto_threshold_rule():
    """Default: 5 % above the highest warm-up score; quantile and factor are parameters."""
    s = np.arange(1.0, 101.0)
    assert auto_threshold(s) == pytest.approx(105.0)
    assert auto_threshold(s, quantile=0.5, factor=2.0) == pytest.approx(101.0)
    with pytest.raises(ValueError):
        auto_threshold(np.array([]))
    with pytest.raises(ValueError):
        auto_threshold(s, quantile=0.0)
