"""Build the C-MAPSS FD001 remaining-useful-life model (``builtin:cmapss_rul``) and measure it.

Engines, not rows, are split (seeded): 65 train the network, 15 calibrate the conformal
interval and the int8 guard, 20 are held out and only ever measured. Input: the last 30
cycles of the 14 informative sensors, raw; the graph standardises them (training-engine
mean and std), flattens and runs a 420-64-32-1 ReLU MLP (scikit-learn, fixed seed) whose
target is the piecewise-linear RUL ``min(125, cycles left)``. The int8 file comes from
:func:`agent.tools.quantize.quantize_static_int8` and ships only if its RMSE on the calibration
engines is within ``INT8_MAX_RMSE_RISE`` of the fp32 model's.

Interval: split conformal on the calibration engines' windows, by bin of the estimate
(errors grow with the estimate): per bin the 5 % and 95 % residual quantiles with the
finite-sample correction, so ``[estimate + low, estimate + high]`` aims at 90 % coverage.
Its coverage on the held-out engines is measured and recorded.

Held-out protocol (as NASA's test set): each held-out engine is cut at ``CUTS`` seeded
points (true RUL uniform in 7..145 cycles where the engine is long enough) and the estimate
at the cut is scored: RMSE and the PHM08 score.

    python -m agent.tools.training.cmapss --out agent/models [--data DIR]
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from agent.tools.training import datasets, metrics, onnx_graph
from agent.tools.training.shipping import sha256, trainer_main, update_manifest

NAME = "cmapss_rul"
SENSORS = (
    "s2",
    "s3",
    "s4",
    "s7",
    "s8",
    "s9",
    "s11",
    "s12",
    "s13",
    "s14",
    "s15",
    "s17",
    "s20",
    "s21",
)
WINDOW = 30
CAP = 125
SEED = 0
SPLIT_SEED = 0
HELD_OUT, CALIBRATION = 20, 15
CUTS, CUT_SEED, CUT_RUL = 20, 7, (7, 145)
HIDDEN = (64, 32)
COVERAGE = 0.9
BIN_EDGES = (40.0, 80.0)  # estimate bins of the conformal interval (cycles)
INT8_MAX_RMSE_RISE = 0.5  # cycles, on the calibration engines
LIMIT = 30  # default due limit (cycles) written into the model


def split(engines: list[int]) -> dict[str, list[int]]:
    """Seeded split of engine ids: ``train``, ``calibration``, ``held_out`` (sorted)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(np.asarray(engines))
    held, cal = order[:HELD_OUT], order[HELD_OUT : HELD_OUT + CALIBRATION]
    train = order[HELD_OUT + CALIBRATION :]
    return {
        k: sorted(v.tolist())
        for k, v in (("train", train), ("calibration", cal), ("held_out", held))
    }


def sensor_columns(data: datasets.Cmapss) -> list[int]:
    return [data.columns.index(s) for s in SENSORS]


def engine_windows(data: datasets.Cmapss, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window ``[k, WINDOW, 14]`` of an engine (raw sensors) and the true cycles left
    after each window's last cycle (counting the engine's ``rul`` beyond its last row)."""
    x = data.engine(unit)[:, sensor_columns(data)]
    n = len(x)
    if n < WINDOW:
        return np.zeros((0, WINDOW, len(SENSORS)), np.float32), np.zeros(0, np.int64)
    win = np.lib.stride_tricks.sliding_window_view(x, (WINDOW, x.shape[1]))[:, 0]
    left = n - 1 - np.arange(WINDOW - 1, n) + data.rul[unit]
    return np.ascontiguousarray(win, np.float32), left.astype(np.int64)


def windows(data: datasets.Cmapss, units: list[int]) -> tuple[np.ndarray, np.ndarray]:
    parts = [engine_windows(data, u) for u in units]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def validation_cuts(data: datasets.Cmapss, units: list[int]) -> list[tuple[int, int, int]]:
    """``(unit, cycles observed, true RUL)`` for ``CUTS`` seeded cuts of each engine."""
    rng = np.random.default_rng(CUT_SEED)
    out = []
    for u in units:
        n = int((data.unit == u).sum())
        top = min(CUT_RUL[1], n - WINDOW)
        if top < CUT_RUL[0]:
            continue
        for rul in sorted(rng.integers(CUT_RUL[0], top + 1, CUTS).tolist()):
            out.append((u, n - rul, rul))
    return out


def conformal_bins(estimate: np.ndarray, target: np.ndarray) -> list[list[float]]:
    """``[[upper edge, low, high], ...]`` residual quantiles per estimate bin (last edge inf)."""
    tail = (1 - COVERAGE) / 2
    bins, lo_edge = [], -np.inf
    for edge in (*BIN_EDGES, np.inf):
        sel = (estimate >= lo_edge) & (estimate < edge)
        r = np.sort(target[sel] - estimate[sel])
        n = len(r)
        k_lo = max(int(np.floor((n + 1) * tail)) - 1, 0)
        k_hi = min(int(np.ceil((n + 1) * (1 - tail))) - 1, n - 1)
        bins.append([float(edge), round(float(r[k_lo]), 3), round(float(r[k_hi]), 3)])
        lo_edge = edge
    return bins


def interval(estimate: np.ndarray, bins: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` around each estimate from :func:`conformal_bins`, low clipped at 0."""
    edges = np.array([b[0] for b in bins[:-1]])
    k = np.searchsorted(edges, estimate, side="right")
    low = np.array([b[1] for b in bins])[k]
    high = np.array([b[2] for b in bins])[k]
    return np.maximum(estimate + low, 0.0), estimate + high


def metadata(mean: np.ndarray, std: np.ndarray, bins: list[list[float]]) -> dict:
    """The model's contract, stored in its ONNX metadata (JSON values) and read by the
    ``onnx_regression`` handler."""
    return {
        "output": "regression",
        "quantity": "rul",
        "units": "cycles",
        "worse": "lower",
        "limit": LIMIT,
        "cap": CAP,
        "window_size": WINDOW,
        "channels": list(SENSORS),
        "interval": {
            "method": "split conformal by estimate bin",
            "coverage": COVERAGE,
            "bins": bins,
        },
        "normalisation": {"mean": np.round(mean, 6).tolist(), "std": np.round(std, 6).tolist()},
    }


def export(mlp, mean: np.ndarray, std: np.ndarray, meta: dict, path: Path) -> Path:
    """``input`` [N, 30, 14] raw -> standardise -> flatten -> MLP -> ReLU -> ``rul`` [N]."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(std.astype(np.float32), "std"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["h0"], axis=1),
    ]
    layers = list(zip(mlp.coefs_, mlp.intercepts_))
    for i, (w, b) in enumerate(layers):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Gemm", [f"h{i}", f"W{i}", f"b{i}"], [f"z{i}"]),
            helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"]),  # last one: RUL >= 0
        ]
    nodes.append(helper.make_node("Squeeze", [f"h{len(layers)}", "axis1"], ["rul"]))
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", WINDOW, len(SENSORS)])],
        [helper.make_tensor_value_info("rul", TensorProto.FLOAT, ["N"])],
        inits,
    )
    return onnx_graph.save(onnx_graph.finish(graph, meta, "agent.tools.training.cmapss"), path)


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    (out,) = session(path).run(["rul"], {"input": x})
    return out.astype(np.float64)


def latency_ms(path: Path, x: np.ndarray, repeats: int = 300) -> float:
    """Median wall time (ms) of one call on ``x`` (one thread)."""
    sess = session(path)
    for _ in range(20):
        sess.run(["rul"], {"input": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(["rul"], {"input": x})
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def held_out_metrics(path: Path, data: datasets.Cmapss, held: list[int], bins: list) -> dict:
    """RMSE/PHM at the seeded cuts, RMSE over every window, interval coverage."""
    cuts = validation_cuts(data, held)
    est, true = [], []
    all_est, all_target = [], []
    for u in held:
        x, left = engine_windows(data, u)
        p = predict(path, x)
        all_est.append(p)
        all_target.append(np.minimum(left, CAP))
        for _, _, rul in (c for c in cuts if c[0] == u):
            est.append(p[np.flatnonzero(left == rul)[0]])
            true.append(rul)
    est_a, true_a = np.asarray(est), np.asarray(true)
    capped = np.minimum(true_a, CAP)
    e_all, t_all = np.concatenate(all_est), np.concatenate(all_target)
    lo, hi = interval(est_a, bins)
    lo_all, hi_all = interval(e_all, bins)
    scores = metrics.rul_scores(true_a, est_a)
    return {
        **scores,
        "phm_score_per_engine": round(scores["phm_score"] / len(true_a), 3),
        "cuts": len(true_a),
        "rmse_all_windows": round(float(np.sqrt(np.mean((e_all - t_all) ** 2))), 3),
        "interval_coverage_cuts": round(float(np.mean((lo <= capped) & (capped <= hi))), 3),
        "interval_coverage_windows": round(
            float(np.mean((lo_all <= t_all) & (t_all <= hi_all))), 3
        ),
    }


def manifest_entry(file: str, meta: dict, parts: dict, measured: dict, quant: str) -> dict:
    return {
        "file": file,
        "task": "remaining useful life (cycles) of a turbofan engine from its last 30 cycles",
        "input": {
            "name": "input",
            "shape": ["N", WINDOW, len(SENSORS)],
            "dtype": "float32",
            "layout": "NWC: 30 cycles oldest first, raw sensor values in 'channels' order",
        },
        "channels": list(SENSORS),
        "output": {
            "name": "rul",
            "shape": ["N"],
            "dtype": "float32",
            "kind": "regression",
            "quantity": "rul",
            "units": "cycles",
            "worse": "lower",
            "meaning": f"estimated cycles to failure, piecewise-linear target capped at {CAP}",
        },
        "window": {"size": WINDOW, "channels": len(SENSORS), "hop": 1},
        "normalisation": {
            "kind": "in graph: (x - mean) / std of the training engines (model metadata)",
        },
        "decision": {"limit": LIMIT, "over_if": "estimate < limit", "closes": "reset or clear"},
        "interval": meta["interval"],
        "quantization": quant,
        "training": {
            "data": "NASA C-MAPSS FD001 train_FD001.txt (datasets/cmapss); engines split "
            f"(seed {SPLIT_SEED}): {len(parts['train'])} train, {len(parts['calibration'])} "
            f"calibration (interval, int8 guard), {len(parts['held_out'])} held out",
            "held_out_engines": parts["held_out"],
            "calibration_engines": parts["calibration"],
            "licence": "NASA open data (US Government work)",
            "command": "python -m agent.tools.training.cmapss --out agent/models",
            "model": f"MLP {WINDOW * len(SENSORS)}-{'-'.join(map(str, HIDDEN))}-1 ReLU "
            "(scikit-learn MLPRegressor, adam, alpha 1e-3, early stopping)",
            "seed": SEED,
        },
        "metrics": {
            "protocol": f"held-out engines, each cut at {CUTS} seeded points (true RUL uniform "
            f"in {CUT_RUL[0]}..{CUT_RUL[1]}); estimate at the cut vs true RUL (not capped); "
            "coverage vs the capped target",
            **measured,
        },
    }


def build(out: Path, root: Path | None = None) -> dict:
    """Train, export fp32 and int8, measure on the held-out engines, update the manifest."""
    from sklearn.neural_network import MLPRegressor

    from agent.tools.quantize import quantize_static_int8

    data = datasets.cmapss_train(root)
    parts = split(data.engines())
    x_tr, left_tr = windows(data, parts["train"])
    flat = x_tr.reshape(len(x_tr), -1).astype(np.float64)
    mean = x_tr.reshape(-1, len(SENSORS)).mean(axis=0)
    std = x_tr.reshape(-1, len(SENSORS)).std(axis=0)
    z = (x_tr - mean) / std
    mlp = MLPRegressor(
        hidden_layer_sizes=HIDDEN,
        alpha=1e-3,
        batch_size=256,
        learning_rate_init=1e-3,
        max_iter=300,
        early_stopping=True,
        random_state=SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: early stopping decides
        mlp.fit(z.reshape(len(z), -1), np.minimum(left_tr, CAP).astype(np.float64))
    del flat
    x_cal, left_cal = windows(data, parts["calibration"])
    tmp = out / f"{NAME}_fp32.onnx"
    export(mlp, mean, std, metadata(mean, std, [[float("inf"), 0.0, 0.0]]), tmp)
    target_cal = np.minimum(left_cal, CAP).astype(np.float64)
    est_cal = predict(tmp, x_cal)
    bins = conformal_bins(est_cal, target_cal)
    meta = metadata(mean, std, bins)
    fp32 = export(mlp, mean, std, meta, out / f"{NAME}_fp32.onnx")
    int8 = out / f"{NAME}_int8.onnx"
    sample = x_tr[np.random.default_rng(SEED).choice(len(x_tr), 4000, replace=False)]
    quantize_static_int8(fp32, int8, "input", sample)
    _copy_metadata(fp32, int8)
    cal_rmse = {
        k: float(np.sqrt(np.mean((predict(p, x_cal) - target_cal) ** 2)))
        for k, p in (("fp32", fp32), ("int8", int8))
    }
    int8_ok = cal_rmse["int8"] - cal_rmse["fp32"] <= INT8_MAX_RMSE_RISE
    batch = windows(data, parts["held_out"])[0][:100]
    results = {}
    entries = {}
    for key, path, quant in (
        ("fp32", fp32, "none (fp32)"),
        (
            "int8",
            int8,
            "static int8 (agent.tools.quantize.quantize_static_int8: QGemm, MinMax over 4000 "
            "training windows, uint8 activations, int8 weights); guard: RMSE on the "
            f"calibration engines within {INT8_MAX_RMSE_RISE} cycles of fp32 "
            f"({cal_rmse['int8']:.3f} vs {cal_rmse['fp32']:.3f})",
        ),
    ):
        measured = held_out_metrics(path, data, parts["held_out"], bins)
        measured["size_kb"] = round(path.stat().st_size / 1024, 1)
        measured["latency_ms_batch_100"] = latency_ms(path, batch)
        measured["calibration_rmse_all_windows"] = round(cal_rmse[key], 3)
        results[key] = measured
        entries[f"{NAME}_{key}"] = manifest_entry(path.name, meta, parts, measured, quant)
    shipped = "int8" if int8_ok else "fp32"
    entries[NAME] = {**entries[f"{NAME}_{shipped}"], "alias_of": f"{NAME}_{shipped}"}
    if not int8_ok:
        int8.unlink()
        del entries[f"{NAME}_int8"]
    update_manifest(out, entries)
    return {"shipped": shipped, **results, "sha256": sha256(out / entries[NAME]["file"])}


def _copy_metadata(src: Path, dst: Path) -> None:
    """The quantizer drops JSON metadata it did not write: copy the model's contract over."""
    import onnx

    a, b = onnx.load(str(src)), onnx.load(str(dst))
    have = {p.key for p in b.metadata_props}
    for p in a.metadata_props:
        if p.key not in have:
            b.metadata_props.add(key=p.key, value=p.value)
    b.producer_name = a.producer_name
    onnx.save(b, str(dst))


def main(argv: list[str] | None = None) -> int:
    return trainer_main(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
