"""``edge-agent quantize``: int8-quantize an ONNX model and check it against its fp32 source.

    edge-agent quantize MODEL.onnx --calibration DATA --out OUT.onnx [--mode static|dynamic]
        [--min-weights N] [--warmup N] [--labels LABELS] [--threshold T] [--max-drop 0.01]

DATA is ``.npy`` or ``.csv`` (numeric, optional header): either model-ready samples
``[n, *input_shape[1:]]`` or raw rows ``[n, C]`` that become hop-1 windows when the model takes
``[N, W, C]``. ``--warmup N`` normalises rows with
``agent.stages.calibration.fit_normaliser`` of the first N rows, as the runtime does. LABELS (0/1,
one per row or per window) enable the metric:
PR-AUC of ``score``, or F1 at ``--threshold``. The tool prints sizes, latency per batch of 64,
the largest output difference, whether one call for 64 samples gives the same outputs as 64
calls of one (batch invariance), and the metric before/after.

``--mode static`` (default) fixes every activation scale from the calibration data, so scores
do not depend on batching; ``--mode dynamic`` computes them per call from the whole batch, so a
window's score changes with the windows batched beside it (a warning says so). The tool refuses
(exit 2, nothing written) when the metric drops by more than ``--max-drop``; bad input also
exits 2 with nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agent.errors import AgentError
from agent.stages.calibration import fit_normaliser
from agent.tools.training.metrics import average_precision, binary_f1

BATCH = 64


class QuantizeError(AgentError):
    """Bad input to the quantize tool (names the file and what was expected)."""


def load_session(path: Path):
    """An onnxruntime session on ``path``, or a QuantizeError naming the file."""
    import onnxruntime as ort

    if not path.is_file():
        raise QuantizeError(f"{path}: no such model file (expected an .onnx model)")
    opts = ort.SessionOptions()  # as the runtime's onnx handler runs it by default
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for bad files
        raise QuantizeError(f"{path}: not a loadable ONNX model ({e})") from e


def read_array(path: Path, what: str) -> np.ndarray:
    """A float array from ``.npy`` or numeric ``.csv`` (header line skipped if not numeric)."""
    if not path.is_file():
        raise QuantizeError(f"{path}: no such file (expected {what} as .npy or .csv)")
    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), np.float32)
        lines = path.read_text().splitlines()
        try:
            float(lines[0].split(",")[0])
        except (ValueError, IndexError):
            lines = lines[1:]
        return np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, OSError) as e:
        raise QuantizeError(f"{path}: cannot read {what} ({e})") from e


def model_ready(data: np.ndarray, shape: list, path: Path, warmup: int) -> np.ndarray:
    """Shape calibration data for an input of ``shape`` (first dim is the batch)."""
    want = [d if isinstance(d, int) else None for d in shape[1:]]
    if warmup:
        if data.ndim != 2 or len(data) <= warmup:
            raise QuantizeError(f"{path}: --warmup needs rows [n > {warmup}, C], got {data.shape}")
        data = fit_normaliser(data[:warmup]).apply(data)
    if len(want) == 2 and data.ndim == 2 and want[1] == data.shape[1] and want[0]:
        if len(data) < want[0]:
            raise QuantizeError(f"{path}: need at least {want[0]} rows for one window")
        data = np.lib.stride_tricks.sliding_window_view(data, (want[0], data.shape[1]))[:, 0]
    ok = data.ndim == len(want) + 1 and all(w in (None, g) for w, g in zip(want, data.shape[1:]))
    if not ok:
        width = want[-1] if want else "?"
        raise QuantizeError(
            f"{path}: calibration data of shape {list(data.shape)} does not fit model input "
            f"{shape} (expected samples [n, {', '.join(map(str, want))}] or rows of width {width})"
        )
    return np.ascontiguousarray(data, np.float32)


def run(sess, x: np.ndarray) -> np.ndarray:
    """First output of ``sess`` over ``x`` in batches of 64."""
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)]
    return np.concatenate(out).astype(np.float64).reshape(len(x), -1)


def latency_ms(sessions: list, batch: np.ndarray, repeats: int = 500) -> list[tuple[float, float]]:
    """(min, median) wall time in ms of one ``run`` on ``batch`` for each session, runs of the
    sessions interleaved so that load from other processes hits them alike."""
    feeds = [{s.get_inputs()[0].name: batch} for s in sessions]
    for _ in range(20):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for s, f, t in zip(sessions, feeds, times):
            start = time.perf_counter()
            s.run(None, f)
            t.append(time.perf_counter() - start)
    return [(1000 * float(np.min(t)), 1000 * float(np.median(t))) for t in times]


def metric(labels: np.ndarray, out: np.ndarray, threshold: float | None) -> float:
    """PR-AUC of the first output column, or its F1 at ``threshold``."""
    score = out[:, 0] if out.shape[1] == 1 else out[:, -1]
    if threshold is None:
        return average_precision(labels, score)
    return binary_f1(labels, score > threshold)[0]


class _Reader:
    """CalibrationDataReader over model-ready samples in batches of 64."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = (
            {name: x[i : i + BATCH]} for i in range(0, len(x), BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


class _NoPreprocessHint(logging.Filter):
    """Drops onnxruntime.quantization's "consider pre-processing" hint (shape inference, which
    is what it suggests, is done by :func:`_prepare`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet():
    root, hint = logging.getLogger(), _NoPreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _prepare(model):  # onnx.ModelProto -> onnx.ModelProto
    """A copy ready for static quantization: every node named, and ``MatMul`` + ``Add`` of a
    constant bias on a 2-D input fused into one ``Gemm`` (quantized as ``QGemm`` with an int32
    bias, one node instead of three)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.value_info]}
    outputs = {o.name for o in g.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    fused, skip = [], set()
    for n in g.node:
        if id(n) in skip:
            continue
        add = users.get(n.output[0], []) if n.op_type == "MatMul" else []
        if (
            len(add) == 1
            and add[0].op_type == "Add"
            and n.output[0] not in outputs
            and rank.get(n.input[0]) == 2
            and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2
        ):
            bias = [i for i in add[0].input if i != n.output[0]]
            if len(bias) == 1 and bias[0] in inits:
                b = numpy_helper.to_array(inits[bias[0]])
                if b.size == inits[n.input[1]].dims[1] and b.ndim <= 2:
                    fused.append(
                        helper.make_node(
                            "Gemm", [n.input[0], n.input[1], bias[0]], [add[0].output[0]]
                        )
                    )
                    skip.add(id(add[0]))
                    continue
        fused.append(n)
    for i, n in enumerate(fused):
        n.name = n.name or f"{n.op_type}_{i}"
    del g.node[:]
    g.node.extend(fused)
    del g.value_info[:]
    return model


def _float_outputs(model):  # onnx.ModelProto -> onnx.ModelProto
    """``QGemm -> DequantizeLinear`` becomes one ``QGemm`` with a float output: the int32
    accumulator is scaled to float directly, so the output is not rounded to 8 bits again (or
    clipped to its calibrated range) and one node less runs."""
    g = model.graph
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    drop = []
    for n in g.node:
        after = users.get(n.output[0], [])
        if (
            n.op_type == "QGemm"
            and len(n.input) == 9
            and n.output[0] not in outputs
            and len(after) == 1
            and after[0].op_type == "DequantizeLinear"
            and list(after[0].input[1:]) == list(n.input[7:9])
        ):
            del n.input[7:]
            n.output[0] = after[0].output[0]
            drop.append(after[0])
    for n in drop:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def quantize_static_int8(
    src: Path, dst: Path, name: str, x: np.ndarray, min_weights: int = 0
) -> Path:
    """Static int8 quantization of the weight layers of ``src``, written to ``dst``.

    Activation scales are fixed from the calibration samples ``x`` (min/max, uint8, per
    tensor; weights int8), so a sample's output never depends on the other samples in the
    call: one call for N windows gives the same scores as N calls. ``MatMul`` (+ bias ``Add``)
    and ``Gemm`` become ``QGemm`` / ``QLinearMatMul`` (QOperator format), ``Conv`` becomes
    ``QLinearConv``; every other op stays float. Layers whose weight tensor has fewer than
    ``min_weights`` elements stay float too (small layers save little and can cost accuracy).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = _prepare(onnx.load(str(src)))
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    nodes = [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv") and sizes.get(n.input[1], 0) >= min_weights
    ]
    if not nodes:
        raise QuantizeError(f"{src}: no MatMul, Gemm or Conv layer with >= {min_weights} weights")
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        staged = Path(tmp) / "q.onnx"
        quantize_static(
            model,
            str(staged),
            _Reader(name, np.ascontiguousarray(x, np.float32)),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_quantize=nodes,
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        out = _float_outputs(onnx.load(str(staged)))
    onnx.checker.check_model(out)
    onnx.save(out, str(dst))
    return dst


def batch_deviation(sess, x: np.ndarray) -> float:
    """Largest relative difference between the outputs of one call on all of ``x`` and of one
    call per sample (0 for a batch-invariant model)."""
    name = sess.get_inputs()[0].name
    whole = sess.run(None, {name: x})[0].astype(np.float64)
    each = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    return float(np.max(np.abs(whole - each) / np.maximum(np.abs(each), 1e-6)))


DYNAMIC_WARNING = (
    "warning: dynamic quantization computes activation scales from each call's whole input, "
    "so a window's score depends on the other windows batched with it (the runtime batches "
    "many devices together); use --mode static for batch-invariant scores"
)


def quantize(
    src: Path, dst: Path, mode: str, name: str, x: np.ndarray, min_weights: int = 0
) -> None:
    """Write the int8 model of ``src`` to ``dst`` (static with calibration ``x``, or dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode == "dynamic":
        with _quiet():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        quantize_static_int8(src, dst, name, x, min_weights)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent quantize", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="fp32 ONNX model")
    p.add_argument("--calibration", type=Path, required=True, help="samples or rows (.npy/.csv)")
    p.add_argument("--out", type=Path, required=True, help="where to write the int8 model")
    p.add_argument(
        "--mode",
        choices=("static", "dynamic"),
        default="static",
        help="static: activation scales fixed from --calibration (batch-invariant, default); "
        "dynamic: scales per call from the whole batch (scores depend on batching)",
    )
    p.add_argument(
        "--min-weights",
        type=int,
        default=0,
        help="static: layers with fewer weights than this stay float (default: quantize all)",
    )
    p.add_argument("--warmup", type=int, default=0, help="normalise rows by the first N rows")
    p.add_argument("--labels", type=Path, help="0/1 per row or per sample (.npy/.csv)")
    p.add_argument("--threshold", type=float, help="metric is F1 at this score (else PR-AUC)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest allowed metric drop")
    return p


def _labels(path: Path, n_rows: int, n_samples: int) -> np.ndarray:
    y = read_array(path, "labels").ravel()
    if len(y) == n_samples:
        return y
    if len(y) == n_rows and n_rows >= n_samples:
        return y[n_rows - n_samples :]  # per-row labels: a window takes its newest row's label
    raise QuantizeError(f"{path}: {len(y)} labels, expected {n_samples} (samples) or {n_rows}")


def execute(args: argparse.Namespace) -> int:
    """Quantize, compare and write; returns the exit code."""
    fp32 = load_session(args.model)
    inp = fp32.get_inputs()[0]
    raw = read_array(args.calibration, "calibration data")
    x = model_ready(raw, inp.shape, args.calibration, args.warmup)
    labels = _labels(args.labels, len(raw), len(x)) if args.labels else None
    if not args.out.parent.is_dir():
        raise QuantizeError(f"{args.out.parent}: output directory does not exist")
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=args.out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize(args.model, tmp, args.mode, inp.name, x, args.min_weights)
        int8 = load_session(tmp)
        a, b = run(fp32, x), run(int8, x)
        batch = x[:BATCH] if len(x) >= BATCH else np.resize(x, (BATCH, *x.shape[1:]))
        print(
            f"size      fp32 {args.model.stat().st_size / 1024:8.1f} KB   "
            f"int8 {tmp.stat().st_size / 1024:8.1f} KB"
        )
        (f_min, f_med), (i_min, i_med) = latency_ms([fp32, int8], batch)
        print(
            f"latency   fp32 {f_min:8.3f} ms   int8 {i_min:8.3f} ms   (batch of {BATCH}, min of "
            f"500 interleaved runs, 1 thread; medians {f_med:.3f} / {i_med:.3f} ms)"
        )
        print(f"max |fp32 - int8| output difference: {float(np.max(np.abs(a - b))):.6g}")
        check = x[:BATCH]
        dev = batch_deviation(int8, check)
        verdict = "batch-invariant" if dev <= 1e-5 else "NOT batch-invariant"
        print(
            f"batch     int8: one call for {len(check)} samples vs {len(check)} calls of one: "
            f"max relative difference {dev:.3g} ({verdict})"
        )
        if args.mode == "dynamic":
            print(DYNAMIC_WARNING, file=sys.stderr)
        if labels is not None:
            before, after = metric(labels, a, args.threshold), metric(labels, b, args.threshold)
            name = "pr_auc" if args.threshold is None else f"f1@{args.threshold:g}"
            print(f"{name:9} fp32 {before:8.4f}      int8 {after:8.4f}   drop {before - after:.4f}")
            if before - after > args.max_drop:
                print(
                    f"refused: {name} dropped by {before - after:.4f} > --max-drop "
                    f"{args.max_drop}; nothing written",
                    file=sys.stderr,
                )
                return 2
        tmp.replace(args.out)
        print(f"wrote {args.out}")
        return 0
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 on success, 2 on refusal or bad input."""
    args = parser().parse_args(argv)
    try:
        return execute(args)
    except QuantizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
