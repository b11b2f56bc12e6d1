"""Build the shipped bearing-condition model from synthetic signals (fixed seed).

No public bearing dataset is available on the build machines, so the classes are simulated
with the textbook fault signatures, and the model is only a worked example, not a
validated diagnostic:

- ``normal``: shaft 1x/2x harmonics and broadband noise;
- ``imbalance``: a strong 1x shaft component;
- ``outer_race``: impacts at BPFO (3.58 x shaft speed) ringing a 2-4 kHz resonance;
- ``inner_race``: impacts at BPFI (5.42 x shaft speed) ringing the resonance, amplitude
  modulated once per revolution.

Features: :func:`edge_agent_vibration.features.features`. Classifier: multinomial logistic
regression (scikit-learn) written as a small ONNX graph (standardise, MatMul, Add,
Softmax) with its settings in the model's metadata. Run::

    python -m edge_agent_vibration.build_model --out edge_agent_vibration/models/bearing_lr.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .features import features

CLASSES = ["normal", "imbalance", "outer_race", "inner_race"]
SAMPLE_RATE = 12800
WINDOW = 1024
BANDS = 16
SEED = 20240501


def _impacts(rng, t, rate, fs, severity):
    """An impact train at ``rate`` Hz ringing a random resonance, with timing jitter."""
    f_res = rng.uniform(2000, 4000)
    decay = rng.uniform(600, 1200)
    period = 1.0 / rate
    x = np.zeros_like(t)
    start = rng.uniform(0, period)
    for t0 in np.arange(start, t[-1], period):
        t0 += rng.normal(0, 0.01 * period)
        m = t >= t0
        dt = t[m] - t0
        x[m] += severity * np.exp(-decay * dt) * np.sin(2 * np.pi * f_res * dt)
    return x


def simulate(cls: str, rng: np.random.Generator, size: int = WINDOW, fs: int = SAMPLE_RATE):
    """One synthetic accelerometer window (g) of class ``cls``."""
    t = np.arange(size) / fs
    fr = rng.uniform(23.5, 26.5)  # shaft speed, Hz: a fixed-speed machine, 1500 rpm +- 6%
    ph = rng.uniform(0, 2 * np.pi, 3)
    x = 0.2 * np.sin(2 * np.pi * fr * t + ph[0]) + 0.05 * np.sin(4 * np.pi * fr * t + ph[1])
    x += rng.normal(0, rng.uniform(0.05, 0.15), size)
    severity = rng.uniform(0.3, 1.5)
    if cls == "imbalance":
        x += severity * 1.5 * np.sin(2 * np.pi * fr * t + ph[2])
    elif cls == "outer_race":
        x += _impacts(rng, t, 3.58 * fr, fs, severity)
    elif cls == "inner_race":
        mod = 0.6 + 0.4 * np.cos(2 * np.pi * fr * t + ph[2])
        x += mod * _impacts(rng, t, 5.42 * fr, fs, severity)
    return x.astype(np.float32)


def dataset(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, cls in enumerate(CLASSES):
        for _ in range(per_class):
            xs.append(simulate(cls, rng))
            ys.append(k)
    return np.stack(xs)[:, :, None], np.asarray(ys)


def to_onnx(mean, std, coef, intercept, meta: dict) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f, c = coef.shape[1], coef.shape[0]
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(std.astype(np.float32), "std"),
        numpy_helper.from_array(coef.T.astype(np.float32), "W"),
        numpy_helper.from_array(intercept.astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bearing_condition",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", c])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "edge_agent_vibration.build_model"
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=json.dumps(v))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build(out: Path, per_class: int = 400) -> dict:
    """Train on synthetic windows, write the model, return held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    x, y = dataset(per_class, SEED)
    xt, yt = dataset(per_class // 4, SEED + 1)
    f, ft = features(x, BANDS), features(xt, BANDS)
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-6
    clf = LogisticRegression(max_iter=2000, C=1.0).fit((f - mean) / std, y)
    acc = float((clf.predict((ft - mean) / std) == yt).mean())
    meta = {
        "classes": CLASSES,
        "normal_class": "normal",
        "window_size": WINDOW,
        "bands": BANDS,
        "channels": 1,
        "sample_rate": SAMPLE_RATE,
        "trained_on": f"synthetic bearing signals, seed {SEED}",
        "heldout_accuracy": round(acc, 4),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(to_onnx(mean, std, clf.coef_, clf.intercept_, meta))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "models/bearing_lr.onnx")
    ap.add_argument("--per-class", type=int, default=400)
    args = ap.parse_args()
    print(json.dumps(build(args.out, args.per_class), indent=2))


if __name__ == "__main__":
    main()
