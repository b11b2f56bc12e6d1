"""Shipped models: manifest integrity, builtin: names, ONNX contracts and held-out metrics."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent import models
from agent.handlers.typed import metadata
from agent.tools.training import ai4i, cmapss, datasets, shipping, skab

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
    """input [N, 6] raw features -> probabilities [N, 6] over none and the five modes (the
    classes kind, declared in the metadata), score [N] = 1 - P(none), mode [N] class index."""
    sess = session("ai4i_pdm")
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "score", "mode"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["output"]) == "classes" and json.loads(meta["healthy"]) == "none"
    assert json.loads(meta["classes"]) == list(ai4i.MODE_CLASSES)
    ok = [1, 298.1, 308.6, 1551, 42.8, 0]  # a normal reading
    power_fail = [0, 298.9, 309.1, 2861, 4.6, 143]  # power ~1.4 kW < 3.5 kW: PWF
    probs, score, mode = sess.run(None, {"input": np.array([ok, power_fail], np.float32)})
    assert score.dtype == np.float32 and score.shape == (2,)
    assert score[0] < 0.5 < score[1]
    assert ai4i.MODE_CLASSES[mode[0]] == "none" and ai4i.MODE_CLASSES[mode[1]] == "PWF"
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(1 - probs[:, 0], score, atol=1e-6)
    assert [ai4i.MODE_CLASSES[k] for k in probs.argmax(axis=1)] == ["none", "PWF"]


def test_ai4i_training_scores_as_the_runtime():
    """The training script's held-out metrics (the whole split in one onnxruntime call) are
    the runtime's (one row per window through the pipeline), which test_evaluate recounts
    from the CSV labels and checks against the README; the manifest records the same."""
    from agent.tools.evaluate import evaluate_ai4i

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
    from agent.tools.evaluate import evaluate_skab

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


def test_cmapss_rul_contract_and_size():
    """builtin:cmapss_rul: int8 (QGemm), <= 200 KB, input [N, 30, 14] raw sensors, output rul
    [N], and its metadata declares the regression kind with units, direction, limit and the
    conformal interval; the engines it was measured on were never trained or calibrated on."""
    entry = models.manifest()["cmapss_rul"]
    assert entry["alias_of"] == "cmapss_rul_int8" and entry["file"] == "cmapss_rul_int8.onnx"
    path = models.resolve("cmapss_rul")
    assert path.stat().st_size <= 200 * 1024
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QGemm" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    sess = session("cmapss_rul")
    assert [list(i.shape) for i in sess.get_inputs()] == [["N", 30, 14]]
    assert [o.name for o in sess.get_outputs()] == ["rul"]
    meta = metadata(sess)
    assert (meta["output"], meta["units"], meta["worse"], meta["limit"]) == (
        "regression",
        "cycles",
        "lower",
        30,
    )
    assert meta["channels"] == list(cmapss.SENSORS) == entry["channels"]
    assert len(meta["interval"]["bins"]) == len(cmapss.BIN_EDGES) + 1
    parts = cmapss.split(datasets.cmapss_train().engines())
    assert parts["held_out"] == entry["training"]["held_out_engines"]
    assert not set(parts["held_out"]) & (set(parts["train"]) | set(parts["calibration"]))


def test_cmapss_heldout_metrics_match_manifest():
    """Both files measured again on the held-out engines give the recorded figures; int8 is
    within the guard of fp32."""
    data = datasets.cmapss_train()
    held = cmapss.split(data.engines())["held_out"]
    recorded = {k: models.manifest()[f"cmapss_rul_{k}"]["metrics"] for k in ("fp32", "int8")}
    for key, m in recorded.items():
        bins = models.manifest()[f"cmapss_rul_{key}"]["interval"]["bins"]
        got = cmapss.held_out_metrics(models.resolve(f"cmapss_rul_{key}"), data, held, bins)
        assert all(got[k] == m[k] for k in got), (key, got)
    assert abs(recorded["int8"]["rmse"] - recorded["fp32"]["rmse"]) <= cmapss.INT8_MAX_RMSE_RISE
