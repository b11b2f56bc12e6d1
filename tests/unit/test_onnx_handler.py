"""ONNX handler start-up checks and batching, with real onnxruntime sessions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent.errors import ModelError
from agent.handlers.onnx_model import OnnxHandler, OnnxHandlerConfig


def handler(path, **kw) -> OnnxHandler:
    return OnnxHandler(OnnxHandlerConfig(type="onnx", model=str(path), **kw))


def test_loads_and_scores_batches(w1_models):
    """One call for N windows gives the same scores as N calls of one."""
    h = handler(w1_models[0])
    h.load(32, 8)
    x = np.random.default_rng(0).normal(size=(5, 32, 8)).astype(np.float32)
    batch = h.infer(x)
    single = np.concatenate([h.infer(x[i : i + 1]) for i in range(5)])
    assert batch.shape == (5,)
    np.testing.assert_allclose(batch, single, rtol=1e-5)


def test_shape_mismatch_names_model_and_window(w1_models):
    h = handler(w1_models[0])
    with pytest.raises(ModelError) as e:
        h.load(16, 8)
    msg = str(e.value)
    assert "[N, 256]" in msg and "16 samples x 8 channels" in msg and "[N, 128]" in msg


def test_missing_corrupt_and_tampered_models(w1_models, tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        handler(tmp_path / "none.onnx").load(32, 8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(w1_models[0].read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        handler(bad).load(32, 8)
    good = hashlib.sha256(w1_models[0].read_bytes()).hexdigest()
    handler(w1_models[0], sha256=good).load(32, 8)
    with pytest.raises(ModelError, match="does not match the pinned"):
        handler(w1_models[0], sha256="0" * 64).load(32, 8)


def test_unknown_output_name(w1_models):
    with pytest.raises(ModelError, match="no output 'prob'"):
        handler(w1_models[1], output="prob").load(32, 8)
