"""Shipped models: manifest integrity, builtin: names, ONNX contracts and held-out metrics."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from agent import models
from agent.training import ai4i, datasets, shipping, skab

DATA = datasets.data_root()


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(models.resolve(name)), providers=["CPUExecutionProvider"])


def test_manifest_sha256_matches_files():
    """Every manifest entry names an existing file whose sha256 is recorded."""
    entries = models.manifest()
    assert {"skab_pump_ae_int8", "skab_pump_ae_fp32", "ai4i_pdm"} <= set(entries)
    for entry in entries.values():
        assert shipping.sha256(models.HERE / entry["file"]) == entry["sha256"]
    assert (models.HERE / "LICENSE-SKAB").is_file()


def test_resolve_builtin_names():
    """builtin:NAME and NAME resolve; an unknown name is a KeyError listing the known ones."""
    assert models.resolve("builtin:ai4i_pdm") == models.resolve("ai4i_pdm")
    with pytest.raises(KeyError, match="builtin:skab_pump_ae_int8"):
        models.resolve("builtin:nope")


@pytest.mark.parametrize("name", ["skab_pump_ae_int8", "skab_pump_ae_fp32"])
def test_skab_contract(name):
    """input [N, 32, 8] float32 -> score [N] float32; small for normal data, large when shifted."""
    entry = models.manifest()[name]
    sess = session(name)
    (inp,), (out, cause) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.shape[1:], inp.type) == ("input", [32, 8], "tensor(float)")
    assert entry["input"]["shape"] == ["N", 32, 8] and out.name == entry["output"]["name"]
    assert (cause.name, cause.shape[1:]) == ("channel_error", [8])
    x = np.random.default_rng(0).normal(size=(64, 32, 8)).astype(np.float32)
    (score,) = sess.run(["score"], {"input": x})
    assert score.shape == (64,) and score.dtype == np.float32
    (shifted,) = sess.run(["score"], {"input": x + 5})
    assert shifted.min() > score.max()
    one = x.copy()
    one[:, :, 3] += 5  # one channel off: the per-channel errors name it
    (errors,) = sess.run(["channel_error"], {"input": one})
    assert errors.shape == (64, 8) and (errors.argmax(axis=1) == 3).all()


def test_int8_agrees_with_fp32():
    """The int8 autoencoder is statically quantized (no per-call activation scales), its scores
    stay close to the fp32 scores and the file is at most 200 KB."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(models.resolve("skab_pump_ae_int8"))).graph.node}
    assert "QGemm" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert models.manifest()["skab_pump_ae_int8"]["quantization"].startswith("static int8")
    x = np.random.default_rng(1).normal(size=(64, 32, 8)).astype(np.float32)
    a = session("skab_pump_ae_fp32").run(["score"], {"input": x})[0]
    b = session("skab_pump_ae_int8").run(["score"], {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=0.1, atol=0.05)
    size = models.resolve("skab_pump_ae_int8").stat().st_size
    assert size <= 200 * 1024 and size * 3 < models.resolve("skab_pump_ae_fp32").stat().st_size


def test_ai4i_contract():
    """input [N, 6] raw features -> score [N] probability and mode [N] class index."""
    sess = session("ai4i_pdm")
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["score", "mode"]
    ok = [1, 298.1, 308.6, 1551, 42.8, 0]  # a normal reading
    power_fail = [0, 298.9, 309.1, 2861, 4.6, 143]  # power ~1.4 kW < 3.5 kW: PWF
    score, mode = sess.run(None, {"input": np.array([ok, power_fail], np.float32)})
    assert score.dtype == np.float32 and score.shape == (2,)
    assert score[0] < 0.5 < score[1]
    assert ai4i.MODE_CLASSES[mode[0]] == "none" and ai4i.MODE_CLASSES[mode[1]] == "PWF"


def test_ai4i_training_scores_as_the_runtime():
    """The training script's held-out metrics (the whole split in one onnxruntime call) are
    the runtime's (one row per window through the pipeline), which test_evaluate recounts
    from the CSV labels and checks against the README; the manifest records the same."""
    from agent.evaluate import evaluate_ai4i

    got = ai4i.evaluate(models.resolve("ai4i_pdm"), datasets.ai4i())
    runtime = evaluate_ai4i("builtin:ai4i_pdm", None)["metrics"]
    assert got == {k: runtime[k] for k in got}
    assert got["f1"] == round(runtime["f1_pipeline"], 4)  # the pipeline's own decisions
    recorded = models.manifest()["ai4i_pdm"]["metrics"]
    assert {k: recorded[k] for k in got} == got


def test_skab_training_scores_as_the_runtime():
    """The training script's protocol (whole-file batches, its own threshold rule) gives the
    runtime's figures (``edge-agent evaluate skab``, which test_evaluate recounts and checks
    against the README), since the model is batch-invariant; README: int8 is within 0.01 F1
    of fp32 (unrounded, from the pooled counts); the manifest records the same figures."""
    from agent.evaluate import evaluate_skab

    runtime = evaluate_skab("builtin:skab_pump_ae_int8", None)
    assert (
        skab.evaluate(models.resolve("skab_pump_ae_int8"), datasets.skab_files())
        == (runtime["metrics"])
    )
    f1 = {}
    for name in ("skab_pump_ae_int8", "skab_pump_ae_fp32"):
        result = evaluate_skab(f"builtin:{name}", None)["result"]
        labels = np.concatenate([r.labels[datasets.SKAB_WARMUP :] for r in result.recordings])
        flags = np.concatenate(
            [result.traces[r.device].anomalous[datasets.SKAB_WARMUP :] for r in result.recordings]
        )
        tp, wrong = np.sum(labels & flags), np.sum(labels != flags)
        f1[name] = tp / (tp + wrong / 2)
    assert abs(f1["skab_pump_ae_int8"] - f1["skab_pump_ae_fp32"]) <= 0.01
    recorded = models.manifest()["skab_pump_ae_int8"]["metrics"]
    assert {k: recorded[k] for k in runtime["metrics"]} == runtime["metrics"]
