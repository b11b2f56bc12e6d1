"""Build the W1 reference autoencoder (docs/workload.md) as fp32 ONNX and its int8 twin.

MLP 256-64-16-64-256, ReLU after the first three layers, weights from a fixed seed; input
``input`` [N, 256] float32 (a 32x8 window flattened row-major, oldest sample first), output
``score`` [N] = mean squared reconstruction error per row. The int8 twin is statically
quantized (fixed activation scales from simulated W1 windows), so scores are batch-invariant.
A normal W1 window scores about 0.56, a window holding a spike well above the 1.5 threshold.

    python -m agent.tools.training.w1 --out DIR      # writes w1_fp32.onnx and w1_int8.onnx
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.tools.training.onnx_graph import save_autoencoder

SIZES = (256, 64, 16, 64, 256)
SEED = 1
SPIKE, SPIKE_RATE = 10.0, 0.005


def build_fp32(path: Path, seed: int = SEED) -> Path:
    """Write the fp32 W1 model to ``path`` and return it."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    return save_autoencoder(path, "w1_autoencoder", nodes, inits, x, "input", ["N", 256])


def signal(rows: int, seed: int = SEED, spike_rate: float = SPIKE_RATE) -> np.ndarray:
    """W1 telemetry of one device ``[rows, 8]``: a noisy sine per channel (amplitude 1, noise
    sd 0.05, a random phase and period per channel); about ``spike_rate`` of the rows carry a
    spike of +10 on all 8 values."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    period = rng.uniform(20, 400, 8)
    v = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, 8))
    v = v + rng.normal(0, 0.05, (rows, 8))
    v[rng.random(rows) < spike_rate] += SPIKE
    return v.astype(np.float32)


def calibration_windows(devices: int = 16, rows: int = 2048, seed: int = SEED) -> np.ndarray:
    """W1 windows ``[n, 256]`` (32 x 8 flattened, hop 8) of ``devices`` simulated devices,
    spikes included, for static quantization."""
    out = [
        sliding_window_view(signal(rows, seed * 1000 + d), (32, 8))[::8, 0].reshape(-1, 256)
        for d in range(devices)
    ]
    return np.ascontiguousarray(np.concatenate(out))


def build_int8(fp32: Path, path: Path) -> Path:
    """Quantize ``fp32`` to int8 at ``path``: static quantization, activation scales fixed from
    :func:`calibration_windows`, so a window's score does not depend on its batch."""
    from agent.tools.quantize import quantize_static_int8

    return quantize_static_int8(fp32, path, "input", calibration_windows())


def build(out: Path) -> tuple[Path, Path]:
    """Build both W1 models in ``out``; return (fp32, int8) paths."""
    fp32 = build_fp32(out / "w1_fp32.onnx")
    return fp32, build_int8(fp32, out / "w1_int8.onnx")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/models"))
    args = p.parse_args(argv)
    for path in build(args.out):
        print(path)


if __name__ == "__main__":
    main()
