"""Model files: a pinned sha256, a truncated file, a file replaced while running."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from agent.errors import ModelError
from agent.handlers.onnx_model import OnnxHandler, OnnxHandlerConfig


def handler(path, **kw) -> OnnxHandler:
    return OnnxHandler(OnnxHandlerConfig(type="onnx", model=str(path), **kw))


def test_replaced_file_detected_and_running_model_kept(w1_models, tmp_path):
    """A pinned model swapped on disk is refused; the loaded session keeps scoring."""
    path = tmp_path / "m.onnx"
    shutil.copy(w1_models[1], path)
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    h = handler(path, sha256=pin)
    h.load(32, 8)
    x = np.random.default_rng(1).normal(size=(3, 32, 8)).astype(np.float32)
    before = h.infer(x)
    assert h.check_file() is None
    shutil.copy(w1_models[0], path)  # another (valid) model under the same name
    problem = h.check_file()
    assert problem and "does not match the pinned" in problem and "stays in service" in problem
    np.testing.assert_array_equal(h.infer(x), before)
    with pytest.raises(ModelError, match="does not match the pinned"):
        handler(path, sha256=pin).load(32, 8)  # what a reload would do: refused


def test_unpinned_change_and_truncation(w1_models, tmp_path):
    """Without a pin a change is reported; a truncated file cannot be loaded."""
    path = tmp_path / "m.onnx"
    shutil.copy(w1_models[1], path)
    h = handler(path)
    h.load(32, 8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "changed on disk" in (h.check_file() or "")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        handler(path).load(32, 8)
    path.unlink()
    assert "unreadable" in (h.check_file() or "")
    assert h.infer(np.zeros((1, 32, 8), np.float32)).shape == (1,)


def test_a_model_file_replaced_by_a_huge_one_is_refused_unread(w1_models, tmp_path):
    """A model file grown past MAX_MODEL_BYTES (a sparse file here: real size, no data) is
    refused by the periodic check and by a load without being read into memory."""
    import resource

    from agent.handlers import onnx_model

    path = tmp_path / "m.onnx"
    shutil.copy(w1_models[1], path)
    h = handler(path)
    h.load(32, 8)
    with open(path, "r+b") as f:
        f.truncate(onnx_model.MAX_MODEL_BYTES + 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    problem = h.check_file()
    assert problem and "more than the" in problem and "stays in service" in problem
    with pytest.raises(ModelError, match="more than the"):
        handler(path).load(32, 8)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kib < onnx_model.MAX_MODEL_BYTES // 1024 // 4
