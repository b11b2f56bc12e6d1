"""The vibration plugin on real CWRU recordings: decoder (sample-rate contract), features,
the shipped ONNX model through onnxruntime, the pipeline and ``edge-agent evaluate cwru``."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest
from edge_agent_vibration import MODEL, cwru
from edge_agent_vibration.build_model import BLOCK, SAMPLE_RATE
from edge_agent_vibration.evaluate import evaluate, payloads
from edge_agent_vibration.features import BEARING_6205, feature_count, feature_names, features
from edge_agent_vibration.resample import decimate, ratio

from agent.cli import main
from agent.config import load_config
from agent.errors import ModelError
from agent.records import Message
from agent.stages.processor import build_processor
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "vibration.yaml"


@pytest.fixture(scope="module")
def recordings() -> dict[str, cwru.Recording]:
    return {r.name: r for r in cwru.find(cwru.shipped_root())}


def _processor(**decoder):
    cfg = load_config(CONFIG)
    pipe = cfg.pipelines[0]
    if decoder:
        pipe = pipe.model_copy(update={"decoder": pipe.decoder.model_copy(update=decoder)})
    return build_processor(pipe)


def _block(fs: float, n: int, **extra) -> Message:
    v = np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    body = {"ts": time.time(), "fs": fs, "v": v, **extra}
    return Message("vib/m1/accel", orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def test_features_shape_names_and_scale_invariance():
    """One row per window, one name per column; all but log RMS ignore the signal's scale."""
    x = np.random.default_rng(0).normal(0, 1, (5, BLOCK, 2))
    f = features(x, SAMPLE_RATE, np.full(5, 29.95))
    assert f.shape == (5, feature_count(2)) == (5, len(feature_names(2)))
    g = features(3 * x, SAMPLE_RATE, np.full(5, 29.95))
    scaled = [i for i, n in enumerate(feature_names(2)) if not n.endswith("log_rms")]
    np.testing.assert_allclose(f[:, scaled], g[:, scaled], atol=1e-3)


def test_defect_peak_follows_the_shaft_speed():
    """Impacts at BPFO ringing a 3 kHz resonance: the BPFO feature is high when read at the
    true shaft speed, at 25 Hz as at 35 Hz, and low when read at a wrong speed."""
    t = np.arange(4 * BLOCK) / SAMPLE_RATE

    def impacts(shaft_hz: float) -> np.ndarray:
        x = np.zeros_like(t)
        for t0 in np.arange(0, t[-1], 1 / (BEARING_6205["bpfo"] * shaft_hz)):
            dt = t[t >= t0] - t0
            x[t >= t0] += np.exp(-800 * dt) * np.sin(2 * np.pi * 3000 * dt)
        return x + np.random.default_rng(1).normal(0, 0.05, len(t))

    col = feature_names(1).index("c0_env_bpfo_h1")
    x = np.stack([impacts(25.0), impacts(35.0)])[:, :, None]
    right = features(x, SAMPLE_RATE, np.array([25.0, 35.0]))[:, col]
    wrong = features(x, SAMPLE_RATE, np.array([35.0, 25.0]))[:, col]
    assert (right > 1.0).all() and (right > wrong + 0.5).all(), (right, wrong)


def test_decimation_keeps_the_band_and_removes_aliases():
    """48 kHz -> 12 kHz: a 1 kHz tone passes, a 7 kHz tone (which would alias to 5 kHz) goes."""
    t = np.arange(4 * BLOCK) / 48000
    low, high = (decimate(np.sin(2 * np.pi * f * t), 4) for f in (1000, 7000))
    assert low.shape == (BLOCK,)
    assert abs(low[100:-100].std() * np.sqrt(2) - 1) < 0.01
    # each block is filtered on its own: out-of-band content leaves a transient only in the
    # first and last samples (the filter's half length / 4)
    assert abs(high[20:-20]).max() < 1e-3 and abs(high).max() < 1
    assert [ratio(fs, 12000) for fs in (12000, 24000, 48000, 12800, 6000, 120000)] == [
        1,
        2,
        4,
        None,
        None,
        None,
    ]


def test_held_out_blocks_through_the_pipeline():
    """The shipped model (int8, onnxruntime) on the held-out 30 % of every recording,
    replayed as payloads through decoder, windows and handler: >= 0.98, and no healthy
    block raises an event."""
    out = evaluate(cwru.shipped_root(), "heldout", MODEL)
    assert out["classes"] == ["normal", "ball", "inner", "outer"]
    assert out["blocks"] >= 300 and out["rejected"] == {}
    assert out["accuracy"] >= 0.98 and out["balanced_accuracy"] >= 0.98, out["confusion"]
    assert out["normal_blocks_with_event"] == 0
    assert out["fault_blocks_with_event"] >= 0.98 * out["fault_blocks"]


def test_normal_stays_quiet_and_faults_are_named(recordings):
    """Through configs/vibration.yaml: held-out 48 kHz normal blocks (decimated by the
    decoder) raise no event; inner-race blocks are anomalous and open one episode naming the
    inner race, with every class's probability and the shaft speed from the payload's rpm."""
    p = _processor()
    now, topic = time.time(), "vib/{device}/accel"
    normal = payloads(recordings["1797_Normal"], 4 * BLOCK, "heldout", topic, now)
    inner = payloads(recordings["1797_IR_7_DE12"], BLOCK, "heldout", topic, now)
    events, scored = p.process(normal + inner)
    assert p.counters.errors == {}
    assert len(scored.devices) == len(normal) + len(inner)
    assert all(e.device == "1797_IR_7_DE12" for e in events)
    assert scored.anomalous[len(normal) :].all() and not scored.anomalous[: len(normal)].any()
    opened = [e for e in events if e.payload["event"] == "opened"]
    assert len(opened) == 1  # a persisting fault is one episode
    for e in opened:
        assert e.payload["class"] == "inner"
        assert set(e.payload["probabilities"]) == {"normal", "ball", "inner", "outer"}
        assert e.payload["probabilities"]["normal"] < 0.5
        assert e.payload["shaft_hz"] == pytest.approx(1797 / 60, abs=1e-3)
    assert (scored.details["p_normal"][: len(normal)] > 0.5).all()


def test_shaft_speed_defaults_to_the_trained_one():
    """A block without rpm is read at the model's nominal speed."""
    p = _processor()
    _, scored = p.process([_block(12000, BLOCK)])
    assert scored.details["shaft_hz"].tolist() == [pytest.approx(29.95)]


def test_other_rates_are_decimated_or_rejected():
    """24 kHz is decimated to 12 kHz samples; 12.8 kHz and 48 kHz with resample off are
    rejected under ``sample_rate`` with the rates in the reason, never scored."""
    p = _processor()
    batch = p.decoder.decode_many([_block(24000, 2 * BLOCK, rpm=1797)])
    assert len(batch) == BLOCK and batch.errors == {}
    np.testing.assert_allclose(np.diff(batch.ts), 1 / 12000, atol=1e-6)
    np.testing.assert_allclose(batch.values[:, 1], 29.95, rtol=1e-6)

    _, scored = p.process([_block(12800, BLOCK)])
    assert scored is None
    assert p.counters.errors == {"sample_rate": 1}
    ((_, kind, reason),) = p.rejected
    assert kind == "sample_rate" and "12800 Hz" in reason and "12000 Hz" in reason

    off = _processor(resample=False)
    _, scored = off.process([_block(48000, 4 * BLOCK)])
    assert scored is None and off.counters.errors == {"sample_rate": 1}
    assert "resample: false" in off.rejected[0][2]


@pytest.mark.parametrize(
    ("body", "kind"),
    [({"rpm": -5}, "values"), ({"rpm": "fast"}, "schema"), ({"fs": 0}, "values")],
)
def test_bad_rate_or_speed_fields_are_counted(body, kind):
    p = _processor()
    msg = _block(12000, BLOCK)
    bad = Message(msg.topic, orjson.dumps({**orjson.loads(msg.payload), **body}))
    _, scored = p.process([bad])
    assert scored is None and p.counters.errors == {kind: 1}


def test_a_decoder_at_another_rate_stops_startup():
    """The model declares 12 kHz: a pipeline delivering 12.8 kHz does not start."""
    with pytest.raises(ModelError, match=r"built for 12000 Hz, but the decoder delivers 12800 Hz"):
        _processor(sample_rate=12800)


def test_wrong_window_stops_startup():
    """A window the model was not built for: ModelError naming both shapes."""
    cfg = load_config(CONFIG)
    pipe = cfg.pipelines[0].model_copy(
        update={"window": cfg.pipelines[0].window.model_copy(update={"size": 512})}
    )
    with pytest.raises(
        ModelError,
        match=r"built for windows of 1024 samples x 1 channels, but the pipeline gives 512 x 1",
    ):
        build_processor(pipe)


def test_evaluate_cwru_cli_json(capsys, recordings, tmp_path):
    """``edge-agent evaluate cwru --data DIR --json``: every block of the recordings found,
    the documented keys; a folder without recordings is a clear error."""
    r = recordings["1797_OR@6_21_DE12"]
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "1797_OR@6_21_DE12.npz", DE=r.signal[: 20 * BLOCK, None])
    assert main(["evaluate", "cwru", "--data", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"accuracy", "balanced_accuracy", "blocks", "classes", "confusion"} <= out.keys()
    assert out["blocks"] == 20 and out["classes"] == ["outer"] and out["part"] == "all"
    assert out["confusion"]["outer"]["outer"] == round(out["accuracy"] * 20)
    assert main(["evaluate", "cwru", "--data", str(tmp_path / "sub" / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_shipped_manifest_describes_the_model():
    """The manifest beside the model names its file and checksum, rate, block, speeds,
    classes, split, what was tuned on what, and the held-out figures of the shipped file."""
    import hashlib

    from edge_agent_vibration import MANIFEST

    entry = MANIFEST["bearing_cwru"]
    assert MODEL.name == entry["file"]
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == entry["sha256"]
    assert (entry["sample_rate"], entry["block_size"]) == (SAMPLE_RATE, BLOCK)
    assert entry["classes"] == list(cwru.CLASSES)
    assert entry["shaft_hz_trained"] == [29.95, 29.95]
    assert {"split", "tuned_on", "trained_on", "quantization"} <= entry.keys()
    shipped = entry["heldout_int8" if "int8" in entry["file"] else "heldout_fp32"]
    assert shipped["accuracy"] >= 0.98 and shipped["normal_blocks_scored_fault"] == 0
