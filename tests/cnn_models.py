"""Helpers for the CNN operator tests: one-node models whose output shape ONNX's shape
inference works out, and the comparison with onnxruntime on the targets whose vector widths
differ (portable, AVX2, AVX-512, NEON: the pooling loops are vectorised by GCC for each)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import sparsec
from tests.conftest import TARGET_PARAMS, run_onnxruntime

CNN_TARGETS = [p for p in TARGET_PARAMS
               if p.values[0] in ("generic", "x86-avx2", "x86-avx512", "arm-neon")]

ELEMENT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
                 "uint8": TensorProto.UINT8, "int8": TensorProto.INT8,
                 "int64": TensorProto.INT64}


def one_node(op: str, x_shape, attrs: dict, extra_inputs=(), initializers=(),
             dtype: str = "float32", opset: int = 19, outputs=("y",),
             node_inputs=None, output_shape=None) -> onnx.ModelProto:
    """`op` on input "x", `extra_inputs` ([(name, shape, dtype)] graph inputs) and
    `initializers` ([(name, array)]), in that order unless `node_inputs` names them (with ""
    for an omitted optional input); outputs of `output_shape`, or left to shape inference."""
    inputs = [helper.make_tensor_value_info("x", ELEMENT_TYPES[dtype], list(x_shape))]
    inputs += [helper.make_tensor_value_info(name, ELEMENT_TYPES[kind], list(shape))
               for name, shape, kind in extra_inputs]
    names = ["x"] + [name for name, _, _ in extra_inputs] + [n for n, _ in initializers]
    node = helper.make_node(op, names if node_inputs is None else node_inputs, list(outputs),
                            name="node", **attrs)
    graph = helper.make_graph(
        [node], "cnn", inputs,
        [helper.make_tensor_value_info(name, ELEMENT_TYPES[dtype], output_shape)
         for name in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    # the checker wants the outputs' shapes: ONNX's own inference writes them in
    return model if output_shape else onnx.shape_inference.infer_shapes(model, strict_mode=True)


def check_against_onnxruntime(compiler, target: str, model: onnx.ModelProto, feeds: dict,
                              rtol: float = 0.0, atol: float = 0.0) -> None:
    """Compile for `target` (only that where it cannot run here) and compare every output."""
    result = compiler.compile(model, target)
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)
    for (name, got), wanted in zip(actual.items(), run_onnxruntime(model, feeds), strict=True):
        assert got.shape == wanted.shape, name
        np.testing.assert_allclose(got, wanted, rtol=rtol, atol=atol, err_msg=name)
