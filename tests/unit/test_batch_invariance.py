"""Conformance: one call for N windows gives the same scores as N calls of one window.

The runtime batches windows of many devices into one inference call, so a window's score must
not depend on its neighbours. Checked for every shipped model and both W1 models through the
runtime's ONNX handler; a dynamically quantized model (activation scales computed per call)
must fail the same check, which shows the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent import models
from agent.handlers.onnx_model import OnnxHandler, OnnxHandlerConfig
from agent.tools.quantize import quantize
from agent.tools.training import cmapss, datasets, w1

N = 64
RTOL, ATOL = 1e-5, 1e-6


def handler(path: Path, size: int, channels: int, output: str = "score") -> OnnxHandler:
    cfg = OnnxHandlerConfig(type="onnx", model=str(path), threshold=1.5, output=output)
    h = OnnxHandler(cfg)
    h.load(size, channels)
    return h


def skab_windows(n: int = N, seed: int = 0) -> np.ndarray:
    """Normalised 32x8 pump windows: smooth noise around 0, a quarter with a level shift."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.3, (n, 32, 8)), axis=1) + rng.normal(0, 0.5, (n, 1, 8))
    shifted = rng.random(n) < 0.25
    x[shifted, 16:, rng.integers(0, 8)] += rng.uniform(3, 8)
    return x.astype(np.float32)


def ai4i_rows(n: int = N, seed: int = 0) -> np.ndarray:
    """Raw AI4I readings [n, 1, 6] in the dataset's ranges (type, K, K, rpm, Nm, min)."""
    rng = np.random.default_rng(seed)
    air = rng.uniform(295, 304, n)
    cols = [
        rng.integers(0, 3, n),
        air,
        air + rng.uniform(8, 12, n),
        rng.uniform(1170, 2890, n),
        rng.uniform(3, 77, n),
        rng.uniform(0, 253, n),
    ]
    return np.stack(cols, axis=1)[:, None, :].astype(np.float32)


def cmapss_windows(n: int = N) -> np.ndarray:
    """Raw 30x14 windows of a held-out C-MAPSS engine, from healthy to failing."""
    data = datasets.cmapss_train()
    unit = cmapss.split(data.engines())["held_out"][0]
    x, _ = cmapss.engine_windows(data, unit)
    return x[np.linspace(0, len(x) - 1, n).astype(int)]


def w1_windows(n: int = N, seed: int = 7) -> np.ndarray:
    """W1 windows [n, 32, 8] (noisy sines, spikes of +10 in some) from a device unseen in
    calibration."""
    v = w1.signal(n * 8 + 32, seed=seed, spike_rate=0.02)
    x = np.lib.stride_tricks.sliding_window_view(v, (32, 8))[::8, 0][:n]
    assert (x.max(axis=(1, 2)) > 5).any(), "some windows must hold a spike"
    return np.ascontiguousarray(x)


def batch_vs_single(h: OnnxHandler, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    batch = h.infer(x)
    single = np.concatenate([h.infer(x[i : i + 1]) for i in range(len(x))])
    return batch, single


def assert_batch_invariant(h: OnnxHandler, x: np.ndarray) -> None:
    batch, single = batch_vs_single(h, x)
    np.testing.assert_allclose(batch, single, rtol=RTOL, atol=ATOL)
    order = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_allclose(h.infer(x[order]), batch[order], rtol=RTOL, atol=ATOL)


SHIPPED = sorted(models.manifest())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_batch_invariant(name):
    """Every shipped model: a batch of 64 realistic windows scores as 64 single calls (and in
    any order)."""
    entry = models.manifest()[name]
    size, channels = entry["window"]["size"], entry["window"]["channels"]
    output = "score"
    if name.startswith("ai4i"):
        x = ai4i_rows()
    elif name.startswith("cmapss"):
        x, output = cmapss_windows(), "rul"
    else:
        x = skab_windows()
    assert x.shape[1:] == (size, channels)
    assert_batch_invariant(handler(models.resolve(name), size, channels, output), x)


@pytest.mark.parametrize("which", [0, 1], ids=["fp32", "int8"])
def test_w1_models_are_batch_invariant(w1_models, which):
    """Both W1 models: spiked and normal windows batched together score as alone."""
    assert_batch_invariant(handler(w1_models[which], 32, 8), w1_windows())


def test_dynamic_quantization_is_not_batch_invariant(w1_models, tmp_path):
    """The check can fail: a dynamically quantized W1 twin scores a normal window differently
    when spiked windows share its call, because its activation scales come from the batch."""
    dyn = tmp_path / "w1_dynamic.onnx"
    quantize(w1_models[0], dyn, "dynamic", "input", np.empty((0, 256), np.float32))
    h = handler(dyn, 32, 8)
    x = w1_windows()
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_batch_invariant(h, x)
    batch, single = batch_vs_single(h, x)
    assert np.max(np.abs(batch - single) / single) > 1e-3


def test_w1_scores_follow_the_workload(w1_models):
    """fp32 and int8: a normal W1 window scores about 0.56, a spiked one above 1.5."""
    x = w1_windows()
    spiked = x.max(axis=(1, 2)) > 5
    for path in w1_models:
        s = handler(path, 32, 8).infer(x)
        assert 0.45 < s[~spiked].mean() < 0.65 and s[~spiked].max() < 1.0
        assert s[spiked].min() > 1.5
