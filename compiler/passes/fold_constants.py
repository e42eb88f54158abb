"""Evaluate every node whose inputs are all compile-time constants.

Requires: an imported graph with static shapes (any standard op may appear with all-constant
inputs).
Establishes: no node has only constant inputs and no Shape or Size node remains; every folded
value is a constant tensor whose shape agrees with what shape inference declared for it.

Evaluation uses onnx's own reference implementation, so folding follows the ONNX
specification op by op without a second, hand-written interpreter to keep in step. Each result
is sized before it is evaluated, and refused over the memory limit (`limits.FoldBudget`).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from sparsec.compiler import limits
from sparsec.compiler.ir import DTYPES, Graph, Node, Tensor
from sparsec.compiler.ops import SHAPE_OPS
from sparsec.compiler.static_shapes import evaluate, shape_value
from sparsec.errors import FrontendError, ShapeError

NAME = "fold-constants"

_DTYPE_NAMES = set(DTYPES.values())
SHAPE_ELEMENTS = 1 << 12
"""Constant inputs this small go to the size check by value: shapes, repeats, pads."""


def run(graph: Graph, ctx) -> Graph:
    graph = graph.copy()
    kept = []
    budget = limits.FoldBudget(ctx.options.max_memory,
                               sum(t.nbytes for t in graph.tensors.values() if t.is_constant))
    for node in graph.nodes:
        if node.op in SHAPE_OPS:
            _fold_shape(graph, node)
        elif all(not name or graph.tensors[name].is_constant for name in node.inputs):
            _fold(graph, node, budget)
        else:
            kept.append(node)
    graph.nodes = kept
    graph.remove_unused()
    return graph


def _fold(graph: Graph, node: Node, budget: limits.FoldBudget) -> None:
    proto = helper.make_node(node.op, node.inputs, node.outputs, name=node.name,
                             **{k: _attr_for_onnx(v) for k, v in node.attrs.items()})
    feeds = {name: graph.tensors[name].data for name in node.inputs if name}
    budget.admit(proto, node.name, feeds, graph.opset, SHAPE_ELEMENTS)
    results = {name: np.asarray(value)
               for name, value in zip(node.outputs, evaluate(proto, feeds, graph.opset)) if name}
    budget.hold(proto, node.name, results)
    for name, value in results.items():
        if str(value.dtype) not in _DTYPE_NAMES:
            raise FrontendError(f"constant node {node.name!r} (op {node.op}) produces "
                                f"{value.dtype} values, which sparsec does not support")
        declared = graph.tensors.get(name)
        if declared is not None and tuple(declared.shape) != value.shape:
            raise ShapeError(f"node {node.name!r} (op {node.op}) evaluates {name!r} to shape "
                             f"{value.shape}, but the model declares {declared.shape}")
        graph.tensors[name] = Tensor(name, tuple(value.shape), str(value.dtype), value)


def _fold_shape(graph: Graph, node: Node) -> None:
    """Shape and Size read only the input's shape, which is static after import."""
    value = shape_value(node.op, graph.tensors[node.inputs[0]].shape, node.attrs)
    graph.tensors[node.outputs[0]] = Tensor(node.outputs[0], value.shape, "int64", value)


def _attr_for_onnx(value):
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value
