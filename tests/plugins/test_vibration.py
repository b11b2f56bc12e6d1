"""The vibration plugin through the real pipeline: blocks -> windows -> features -> ONNX."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from edge_agent_vibration.build_model import CLASSES, simulate
from edge_agent_vibration.features import feature_count, features

from agent.config import load_config
from agent.errors import ModelError
from agent.processor import build_processor
from agent.records import Message
from tests.conftest import ROOT


def test_features_shape_and_scale_invariance():
    """One row per window; band shares do not change when the signal is scaled."""
    x = np.random.default_rng(0).normal(0, 1, (5, 1024, 2)).astype(np.float32)
    f = features(x, 16)
    assert f.shape == (5, feature_count(2, 16))
    g = features(3 * x, 16)
    np.testing.assert_allclose(f[:, 3:35], g[:, 3:35], atol=1e-4)


def _blocks(cls: str, n: int, seed: int, device: str):
    rng = np.random.default_rng(seed)
    return [
        Message(
            f"vib/{device}/accel",
            orjson.dumps({"ts": time.time() + i, "fs": 12800, "v": simulate(cls, rng).tolist()}),
        )
        for i in range(n)
    ]


def test_pipeline_flags_bearing_faults():
    """Outer-race windows are anomalous and open one episode naming the condition; normal
    ones mostly are not."""
    cfg = load_config(ROOT / "configs" / "vibration.yaml")
    p = build_processor(cfg.pipelines[0])
    events, scored = p.process(
        _blocks("outer_race", 20, 11, "m1") + _blocks("normal", 20, 12, "m2")
    )
    assert len(scored.devices) == 40
    flags = {d: scored.anomalous[[x == d for x in scored.devices]] for d in ("m1", "m2")}
    assert flags["m1"].sum() >= 16 and flags["m2"].sum() <= 2
    opened = [e.payload for e in events if e.payload["event"] == "opened"]
    m1 = [e for e in opened if e["device"] == "m1"]
    assert len(m1) == 1 and m1[0]["condition"] == "outer_race"
    assert {e["condition"] for e in opened} <= set(CLASSES)


def test_wrong_window_stops_startup():
    """A window the model was not built for: ModelError naming both shapes."""
    cfg = load_config(ROOT / "configs" / "vibration.yaml")
    pipe = cfg.pipelines[0].model_copy(
        update={"window": cfg.pipelines[0].window.model_copy(update={"size": 512})}
    )
    with pytest.raises(
        ModelError,
        match=r"built for windows of 1024 samples x 1 channels, but "
        r"the pipeline gives 512 x 1",
    ):
        build_processor(pipe)
