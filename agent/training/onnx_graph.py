"""Shared ONNX graph building for the autoencoders the training scripts export."""

from __future__ import annotations

from pathlib import Path


def save_autoencoder(
    path: Path, name: str, nodes: list, inits: list, recon: str, target: str, input_shape: list
) -> Path:
    """Append ``score = mean((recon - target)^2)`` per row to ``nodes`` and save the model
    (input ``input`` of ``input_shape``, output ``score`` [N], opset 17) at ``path``."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        *nodes,
        helper.make_node("Sub", [recon, target], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
