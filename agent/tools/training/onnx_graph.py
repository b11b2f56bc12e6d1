"""Shared ONNX building for the training scripts: the model wrapper every exported graph gets,
and the autoencoders' score head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finish(graph: Any, meta: dict | None = None, producer: str = "", ml_opset: bool = False) -> Any:
    """An opset-17, IR-8 model of ``graph`` with ``meta`` as JSON metadata, checked."""
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", 17)]
    if ml_opset:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if producer:
        model.producer_name = producer
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=json.dumps(v))
    onnx.checker.check_model(model)
    return model


def save(model: Any, path: Path) -> Path:
    """Write ``model`` at ``path`` (parents made)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def save_autoencoder(
    path: Path,
    name: str,
    nodes: list,
    inits: list,
    recon: str,
    target: str,
    input_shape: list,
    channel_power: float | None = None,
) -> Path:
    """Append the score of each row to ``nodes`` and save the model (input ``input`` of
    ``input_shape``, output ``score`` [N], opset 17) at ``path``.

    ``recon`` and ``target`` are flat rows ``[N, W*C]`` (``C`` = ``input_shape[-1]``). The score
    is ``mean((recon - target)^2)``; with ``channel_power`` p it is the power mean over channels
    of each channel's mean squared error, ``mean_c(mse_c^p)^(1/p)``, which lets one channel's
    error stand out instead of being diluted by the others; the model then also outputs those
    per-channel errors as ``channel_error`` [N, C], which the runtime names as an event's cause.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        *nodes,
        helper.make_node("Sub", [recon, target], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
    ]
    if channel_power is None:
        nodes.append(helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=0))
    else:
        inits = [
            *inits,
            numpy_helper.from_array(np.array([0, -1, input_shape[-1]], np.int64), "wc_shape"),
            numpy_helper.from_array(np.array(channel_power, np.float32), "power"),
            numpy_helper.from_array(np.array(1 / channel_power, np.float32), "root"),
        ]
        nodes += [
            helper.make_node("Reshape", ["sq", "wc_shape"], ["sq_wc"]),
            helper.make_node("ReduceMean", ["sq_wc"], ["mse_c"], axes=[1], keepdims=0),
            helper.make_node("Pow", ["mse_c", "power"], ["mse_p"]),
            helper.make_node("ReduceMean", ["mse_p"], ["mean_p"], axes=[1], keepdims=0),
            helper.make_node("Pow", ["mean_p", "root"], ["score"]),
            helper.make_node("Identity", ["mse_c"], ["channel_error"]),
        ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    if channel_power is not None:
        shape = ["N", input_shape[-1]]
        outputs.append(helper.make_tensor_value_info("channel_error", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        outputs,
        inits,
    )
    return save(finish(graph), path)
