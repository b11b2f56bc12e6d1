"""``edge-agent quantize``: int8-quantize an ONNX model and check it against its fp32 source.

    edge-agent quantize MODEL.onnx --calibration DATA --out OUT.onnx [--mode static|dynamic]
        [--warmup N] [--labels LABELS] [--threshold T] [--max-drop 0.01]

DATA is ``.npy`` or ``.csv`` (numeric, optional header): either model-ready samples
``[n, *input_shape[1:]]`` or raw rows ``[n, C]`` that become hop-1 windows when the model takes
``[N, W, C]``. ``--warmup N`` normalises rows with ``agent.calibration.fit_normaliser`` of the
first N rows, as the runtime does. LABELS (0/1, one per row or per window) enable the metric:
PR-AUC of ``score``, or F1 at ``--threshold``. The tool prints sizes, latency per batch of 64,
the largest output difference and the metric before/after. It refuses (exit 2, nothing written)
when the metric drops by more than ``--max-drop``; bad input also exits 2 with nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agent.calibration import fit_normaliser
from agent.errors import AgentError
from agent.training.metrics import average_precision, binary_f1

BATCH = 64


class QuantizeError(AgentError):
    """Bad input to the quantize tool (names the file and what was expected)."""


def load_session(path: Path):
    """An onnxruntime session on ``path``, or a QuantizeError naming the file."""
    import onnxruntime as ort

    if not path.is_file():
        raise QuantizeError(f"{path}: no such model file (expected an .onnx model)")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
        data = np.lib.stride_tricks.sliding_window_view(data, (want[0], want[1]))[:, 0]
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


def latency_ms(sess, batch: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of one ``sess.run`` on ``batch``, in milliseconds."""
    name = sess.get_inputs()[0].name
    for _ in range(10):
        sess.run(None, {name: batch})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: batch})
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


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


def quantize(src: Path, dst: Path, mode: str, name: str, x: np.ndarray) -> None:
    """Write the int8 model of ``src`` to ``dst`` (static QDQ with ``x``, or dynamic)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        quantize_static(
            str(src),
            str(dst),
            _Reader(name, x),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent quantize", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="fp32 ONNX model")
    p.add_argument("--calibration", type=Path, required=True, help="samples or rows (.npy/.csv)")
    p.add_argument("--out", type=Path, required=True, help="where to write the int8 model")
    p.add_argument("--mode", choices=("static", "dynamic"), default="static")
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
        quantize(args.model, tmp, args.mode, inp.name, x)
        int8 = load_session(tmp)
        a, b = run(fp32, x), run(int8, x)
        batch = x[:BATCH] if len(x) >= BATCH else np.resize(x, (BATCH, *x.shape[1:]))
        print(
            f"size      fp32 {args.model.stat().st_size / 1024:8.1f} KB   "
            f"int8 {tmp.stat().st_size / 1024:8.1f} KB"
        )
        print(
            f"latency   fp32 {latency_ms(fp32, batch):8.3f} ms   "
            f"int8 {latency_ms(int8, batch):8.3f} ms   (batch of {BATCH}, same run)"
        )
        print(f"max |fp32 - int8| output difference: {float(np.max(np.abs(a - b))):.6g}")
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
