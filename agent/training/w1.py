"""Build the W1 reference autoencoder (../shared/WORKLOAD.md) as fp32 ONNX and its int8 twin.

MLP 256-64-16-64-256, ReLU after the first three layers, weights from a fixed seed; input
``input`` [N, 256] float32 (a 32x8 window flattened row-major, oldest sample first), output
``score`` [N] = mean squared reconstruction error per row.

    python -m agent.training.w1 --out DIR      # writes w1_fp32.onnx and w1_int8.onnx
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

SIZES = (256, 64, 16, 64, 256)
SEED = 1


def build_fp32(path: Path, seed: int = SEED) -> Path:
    """Write the fp32 W1 model to ``path`` and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
    nodes += [
        helper.make_node("Sub", [x, "input"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "w1_autoencoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_int8(fp32: Path, path: Path) -> Path:
    """Quantize ``fp32`` to int8 weights (dynamic quantization) at ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


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
