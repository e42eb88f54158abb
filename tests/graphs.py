"""Small ONNX graphs for tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """inputs/outputs: [(name, shape)] float32 (shape entries may be strings: dynamic)."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def mlp(k=8, n=16, m=2, density=1.0, seed=0, activation="Relu") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w *= rng.random((k, n)) < density
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["pre" if activation else "y"], name="add")]
    if activation:
        nodes.append(helper.make_node(activation, ["pre"], ["y"], name="act"))
    return model(nodes, [("x", [m, k])], [("y", [m, n])], [("w", w), ("b", b)])
