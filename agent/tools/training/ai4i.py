"""Build the AI4I 2020 predictive-maintenance classifier as one fp32 ONNX graph and measure it.

Two random forests on the raw features plus three engineered ones computed INSIDE the graph
(process-air temperature difference [K], mechanical power torque*rpm*2*pi/60 [W], tool strain
wear*torque [min*Nm]): one for machine failure, one for the failure mode. Tree ensembles cannot
be int8-quantized, so the model ships fp32. The failure-mode columns are labels, never features.

The graph declares the ``classes`` output kind (ONNX metadata ``output``, ``classes``,
``healthy``): ``probabilities`` [N, 6] over ``none, TWF, HDF, PWF, OSF, RNF`` is
``P(none) = 1 - P(failure)`` and, for each mode, ``P(failure)`` shared out in proportion to the
mode forest's probabilities of the five modes. So ``1 - P(none)`` is exactly the failure
score, and the most likely class is a mode whenever the failure forest says failure is more
likely than not and that mode leads the others. ``score`` and ``mode`` stay for configs that
use the ``onnx`` handler.

    python -m agent.tools.training.ai4i --out agent/models [--data DIR]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.tools.training import datasets, metrics, onnx_graph
from agent.tools.training.shipping import trainer_main, update_manifest

NAME = "ai4i_pdm"
SEED = 0
THRESHOLD = 0.5
MODE_CLASSES = ("none", *datasets.AI4I_MODES)
ENGINEERED = ("Temperature difference [K]", "Power [W]", "Strain [min*Nm]")
FAILURE_FOREST = {"n_estimators": 40, "max_depth": 10, "min_samples_leaf": 2}
MODE_FOREST = {"n_estimators": 20, "max_depth": 8, "min_samples_leaf": 1}


def engineer(x: np.ndarray) -> np.ndarray:
    """Raw ``x[n, 6]`` -> ``[n, 9]``: raw columns then ``ENGINEERED`` (the graph does the same)."""
    x = np.asarray(x, np.float32)
    dt = x[:, 2] - x[:, 1]
    power = x[:, 4] * x[:, 3] * np.float32(2 * np.pi / 60)
    strain = x[:, 5] * x[:, 4]
    return np.column_stack([x, dt, power, strain]).astype(np.float32)


def mode_labels(modes: np.ndarray) -> np.ndarray:
    """Single-label mode target: 0 = none, else 1 + index of the first set mode column."""
    return np.where(modes.any(axis=1), modes.argmax(axis=1) + 1, 0)


def _features_graph():
    """ONNX nodes computing ``features`` [N, 9] from ``input`` [N, 6]."""
    from onnx import helper, numpy_helper

    def col(i: int) -> str:
        return f"c{i}"

    inits = [numpy_helper.from_array(np.array([i], np.int64), f"i{i}") for i in range(6)]
    inits.append(numpy_helper.from_array(np.array(2 * np.pi / 60, np.float32), "rad"))
    nodes = [helper.make_node("Gather", ["input", f"i{i}"], [col(i)], axis=1) for i in range(6)]
    nodes += [
        helper.make_node("Sub", [col(2), col(1)], ["dt"]),
        helper.make_node("Mul", [col(4), col(3)], ["tq_rpm"]),
        helper.make_node("Mul", ["tq_rpm", "rad"], ["power"]),
        helper.make_node("Mul", [col(5), col(4)], ["strain"]),
        helper.make_node("Concat", ["input", "dt", "power", "strain"], ["features"], axis=1),
    ]
    return nodes, inits


def _prefixed(graph, prefix: str, keep: str = "features"):
    """Nodes and initializers of ``graph`` with every name except ``keep`` prefixed."""
    import onnx

    def rename(name: str) -> str:
        return name if name in (keep, "") else prefix + name

    nodes = []
    for n in graph.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = prefix + n.name
        m.input[:] = [rename(i) for i in n.input]
        m.output[:] = [rename(o) for o in n.output]
        nodes.append(m)
    inits = []
    for t in graph.initializer:
        u = onnx.TensorProto()
        u.CopyFrom(t)
        u.name = rename(t.name)
        inits.append(u)
    return nodes, inits


def _class_nodes(f_prob: str, m_prob: str):
    """Nodes and initializers of ``probabilities`` [N, 6] from the two forests' outputs."""
    from onnx import helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "cls_from"),
        numpy_helper.from_array(np.array([len(MODE_CLASSES)], np.int64), "c_end"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", [f_prob, "pos"], ["p_fail"], axis=1),  # [N, 1]
        helper.make_node("Sub", ["one", "p_fail"], ["p_none"]),
        helper.make_node("Slice", [m_prob, "cls_from", "c_end", "ax1"], ["m_modes"]),
        helper.make_node("Add", ["m_modes", "eps"], ["m_modes_e"]),
        helper.make_node("ReduceSum", ["m_modes_e", "ax1"], ["m_total"], keepdims=1),
        helper.make_node("Div", ["m_modes_e", "m_total"], ["m_share"]),
        helper.make_node("Mul", ["m_share", "p_fail"], ["p_modes"]),
        helper.make_node("Concat", ["p_none", "p_modes"], ["probabilities"], axis=1),
    ]
    return nodes, inits


def export(failure_clf, mode_clf, path: Path) -> Path:
    """One graph: ``input`` [N, 6] -> ``probabilities`` [N, 6] (classes ``MODE_CLASSES``),
    ``score`` [N] (failure probability), ``mode`` [N] int64 (the mode forest's label)."""
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx

    sample = engineer(np.zeros((1, 6), np.float32))
    opts = {"zipmap": False}
    fail = to_onnx(failure_clf, sample, options=opts, target_opset={"": 17, "ai.onnx.ml": 3})
    mode = to_onnx(mode_clf, sample, options=opts, target_opset={"": 17, "ai.onnx.ml": 3})
    nodes, inits = _features_graph()
    for prefix, sub in (("f_", fail), ("m_", mode)):
        sub_nodes, sub_inits = _prefixed(sub.graph, prefix, keep=sub.graph.input[0].name)
        for n in sub_nodes:
            n.input[:] = ["features" if i == sub.graph.input[0].name else i for i in n.input]
        nodes += sub_nodes
        inits += sub_inits
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "pos"))
    f_prob = "f_" + fail.graph.output[1].name
    if list(mode_clf.classes_) != list(range(len(MODE_CLASSES))):
        raise ValueError(f"mode forest classes {mode_clf.classes_}: expected 0..5")
    more_nodes, more_inits = _class_nodes(f_prob, "m_" + mode.graph.output[1].name)
    nodes += more_nodes
    inits += more_inits
    nodes += [
        helper.make_node("Gather", [f_prob, "pos"], ["pos_prob"], axis=1),
        helper.make_node("Flatten", ["pos_prob"], ["pos_flat"], axis=0),
        helper.make_node("Squeeze", ["pos_flat", "sq0"], ["score"]),
        helper.make_node("Identity", ["m_" + mode.graph.output[0].name], ["mode"]),
    ]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "sq0"))
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["N", len(MODE_CLASSES)]
            ),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, ["N"]),
        ],
        inits,
    )
    meta = {"output": "classes", "classes": list(MODE_CLASSES), "healthy": MODE_CLASSES[0]}
    return onnx_graph.save(onnx_graph.finish(graph, meta, ml_opset=True), path)


def evaluate(model: Path, data: datasets.Ai4i) -> dict[str, float | dict]:
    """Held-out metrics of the ONNX model on the fixed 20 % test split."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs, score = sess.run(["probabilities", "score"], {"input": data.x[data.test]})
    onehot = np.eye(len(MODE_CLASSES), dtype=np.int64)[probs.argmax(axis=1)][:, 1:]
    return metrics.ai4i_metrics(
        data.failure[data.test], score, data.modes[data.test], onehot, THRESHOLD
    ) | metrics.per_class(data.modes[data.test], onehot, datasets.AI4I_MODES)


def manifest_entry(file: str, measured: dict[str, float | dict]) -> dict:
    """The manifest record of the AI4I model."""
    return {
        "file": file,
        "task": "machine failure probability and failure mode from one reading",
        "input": {
            "name": "input",
            "shape": ["N", 6],
            "dtype": "float32",
            "layout": "NF: raw features in 'features' order",
        },
        "features": list(datasets.AI4I_FEATURES),
        "feature_encoding": {"Type": datasets.AI4I_TYPES},
        "engineered_in_graph": list(ENGINEERED),
        "output": {
            "name": "probabilities",
            "shape": ["N", len(MODE_CLASSES)],
            "dtype": "float32",
            "kind": "classes",
            "classes": list(MODE_CLASSES),
            "healthy": MODE_CLASSES[0],
            "meaning": "P(none) = 1 - P(machine failure); each mode: P(failure) shared out by "
            "the mode forest's probabilities of the five modes (handler: onnx_classifier)",
        },
        "outputs_extra": [
            {
                "name": "score",
                "shape": ["N"],
                "dtype": "float32",
                "meaning": "probability of machine failure (handler: onnx)",
            },
            {"name": "mode", "shape": ["N"], "dtype": "int64", "classes": list(MODE_CLASSES)},
        ],
        "window": {"size": 1, "channels": 6},
        "normalisation": {"kind": "none (raw physical units)"},
        "threshold": {
            "rule": "fixed",
            "default": THRESHOLD,
            "anomaly_if": "1 - P(none) > threshold (onnx_classifier); score > threshold (onnx)",
        },
        "quantization": "none: tree ensembles cannot be int8-quantized; fp32",
        "training": {
            "data": "AI4I 2020 (UCI 601), 80 % stratified split (seed 42); "
            "TWF/HDF/PWF/OSF/RNF, UDI and Product ID are not features",
            "licence": "CC BY 4.0",
            "command": "python -m agent.tools.training.ai4i --out agent/models",
            "seed": SEED,
        },
        "metrics": {"protocol": "held-out 20 % stratified split (seed 42), 2000 rows", **measured},
    }


def build(out: Path, root: Path | None = None) -> dict[str, float | dict]:
    """Train both forests, export the graph, evaluate it and record it in the manifest."""
    from sklearn.ensemble import RandomForestClassifier

    data = datasets.ai4i(root)
    x = engineer(data.x[data.train])
    failure_clf = RandomForestClassifier(random_state=SEED, **FAILURE_FOREST)
    failure_clf.fit(x, data.failure[data.train])
    mode_clf = RandomForestClassifier(random_state=SEED, **MODE_FOREST)
    mode_clf.fit(x, mode_labels(data.modes[data.train]))
    path = export(failure_clf, mode_clf, out / f"{NAME}.onnx")
    measured = evaluate(path, data)
    update_manifest(out, {NAME: manifest_entry(path.name, measured)})
    return measured


def main(argv: list[str] | None = None) -> int:
    return trainer_main(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
