"""edge-agent quantize: happy path, refusal on metric drop, and bad input (exit 2, no file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent import models
from agent.tools.quantize import main

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


def quantize_argv(rows: Path, out: Path, *extra: str) -> list[str]:
    """Quantize FP32 calibrated on ``rows`` (first 100 rows as warm-up, metric on its labels)
    into ``out``, with ``extra`` options."""
    calibration, labels = str(rows / "rows.npy"), str(rows / "labels.npy")
    fixed = ["--calibration", calibration, "--warmup", "100", "--labels", labels, "--out"]
    return [str(FP32), *fixed, str(out), *extra]


@pytest.mark.parametrize("mode", ["static", "dynamic", None])
def test_quantize_happy_path(rows, capsys, mode):
    """A model is written that loads; the report has size, latency, difference, batch check and
    metric. Static (the default) is batch-invariant; dynamic is not, and says so."""
    out = rows / "q.onnx"
    argv = quantize_argv(rows, out, *(["--mode", mode] if mode else []))
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = captured.out
    for word in ("size", "latency", "max |fp32 - int8|", "batch ", "pr_auc", "wrote"):
        assert word in report
    if mode == "dynamic":
        assert "NOT batch-invariant" in report
        assert "depends on the other windows batched with it" in captured.err
    else:
        assert "(batch-invariant)" in report and captured.err == ""
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(["score"], {"input": np.zeros((2, 32, 8), np.float32)})[0].shape == (2,)
    x = np.random.default_rng(2).normal(size=(16, 32, 8)).astype(np.float32)
    x[::4] += 6
    whole = sess.run(["score"], {"input": x})[0]
    each = np.concatenate([sess.run(["score"], {"input": x[i : i + 1]})[0] for i in range(16)])
    if mode != "dynamic":
        np.testing.assert_allclose(whole, each, rtol=1e-5, atol=1e-6)


def test_static_quantization_keeps_scores_float(tmp_path):
    """Static: weight layers become QGemm with float outputs, the score stays float (an
    anomalous window's score is not clipped to the calibrated range)."""
    import onnx

    from agent.tools.quantize import quantize_static_int8

    x = np.random.default_rng(0).normal(size=(256, 32, 8)).astype(np.float32)
    out = quantize_static_int8(FP32, tmp_path / "q.onnx", "input", x)
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QGemm") == 4 and "DynamicQuantizeLinear" not in ops
    assert all(len(n.input) == 7 for n in model.graph.node if n.op_type == "QGemm")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(FP32), providers=["CPUExecutionProvider"])
    far = x[:4] + 50
    np.testing.assert_allclose(
        sess.run(["score"], {"input": far})[0], ref.run(["score"], {"input": far})[0], rtol=0.1
    )


def test_quantize_refuses_metric_drop(rows, capsys):
    """When the metric drop exceeds --max-drop, exit 2 and write nothing."""
    out = rows / "q.onnx"
    argv = quantize_argv(rows, out, "--mode", "dynamic", "--max-drop", "-1")
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
