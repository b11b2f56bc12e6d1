"""edge-agent quantize: happy path, refusal on metric drop, and bad input (exit 2, no file)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from agent import models
from agent.quantize import main

FP32 = models.resolve("skab_pump_ae_fp32")


@pytest.fixture
def rows(tmp_path):
    """200 raw 8-channel rows with a level shift in the last quarter, labelled per row."""
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 1.0, size=(200, 8)).astype(np.float32)
    x[150:, 7] += 8
    labels = (np.arange(200) >= 150).astype(np.int8)
    np.save(tmp_path / "rows.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_happy_path(rows, capsys, mode):
    """A model is written that loads, and the report has size, latency, difference and metric."""
    out = rows / "q.onnx"
    argv = [
        str(FP32),
        "--calibration",
        str(rows / "rows.npy"),
        "--warmup",
        "100",
        "--labels",
        str(rows / "labels.npy"),
        "--out",
        str(out),
        "--mode",
        mode,
    ]
    assert main(argv) == 0
    report = capsys.readouterr().out
    for word in ("size", "latency", "max |fp32 - int8|", "pr_auc", "wrote"):
        assert word in report
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(["score"], {"input": np.zeros((2, 32, 8), np.float32)})[0].shape == (2,)


def test_quantize_refuses_metric_drop(rows, capsys):
    """When the metric drop exceeds --max-drop, exit 2 and write nothing."""
    out = rows / "q.onnx"
    argv = [
        str(FP32),
        "--calibration",
        str(rows / "rows.npy"),
        "--warmup",
        "100",
        "--labels",
        str(rows / "labels.npy"),
        "--out",
        str(out),
        "--mode",
        "dynamic",
        "--max-drop",
        "-1",
    ]
    assert main(argv) == 2
    assert "refused" in capsys.readouterr().err
    assert sorted(p.name for p in rows.iterdir()) == ["labels.npy", "rows.npy"]


def test_quantize_bad_inputs(rows, capsys):
    """Missing or corrupt model, wrong-width data, missing data: exit 2, named file, no output."""
    corrupt = rows / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    wide = rows / "wide.csv"
    wide.write_text("a,b,c\n" + "1,2,3\n" * 40)
    out = rows / "q.onnx"
    cases = [
        ([str(rows / "missing.onnx"), "--calibration", str(rows / "rows.npy")], "missing.onnx"),
        ([str(corrupt), "--calibration", str(rows / "rows.npy")], "corrupt.onnx"),
        ([str(FP32), "--calibration", str(wide)], "rows of width 8"),
        ([str(FP32), "--calibration", str(rows / "nope.npy")], "nope.npy"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--out", str(out)]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()
    assert not list(rows.glob("tmp*"))
