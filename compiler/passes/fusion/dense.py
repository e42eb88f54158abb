"""Matrix products with a constant weight become `Dense` nodes, which then absorb the bias
and the activation that follow them."""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.ops import ACTIVATIONS, DENSE
from sparsec.compiler.passes.fusion.match import clip_bounds, other_input
from sparsec.compiler.passes.fusion.rewrite import Rewrite, Uses


def matmul_to_dense(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != "MatMul":
        return None
    weight = graph.tensors[node.inputs[1]]
    a = graph.tensors[node.inputs[0]]
    if not weight.is_constant or len(weight.shape) != 2 or len(a.shape) < 2:
        return None
    return Rewrite(Node(DENSE, [node.inputs[0], node.inputs[1], ""], list(node.outputs),
                        dense_attrs(source_op="MatMul"), node.name), ())


def gemm_to_dense(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != "Gemm":
        return None
    inputs = list(node.inputs) + [""] * (3 - len(node.inputs))
    attrs = dense_attrs(source_op="Gemm", alpha=float(node.attrs.get("alpha", 1.0)),
                         beta=float(node.attrs.get("beta", 1.0)),
                         trans_a=int(node.attrs.get("transA", 0)),
                         trans_b=int(node.attrs.get("transB", 0)))
    return Rewrite(Node(DENSE, inputs, list(node.outputs), attrs, node.name), ())


def dense_from_dynamic_quantization(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """What onnxruntime's quantize_dynamic writes for a MatMul: DynamicQuantizeLinear(x) ->
    MatMulInteger(x_q, W int8, x_zero_point, 0) -> Cast(float) -> Mul(x_scale * w_scale): one
    int8 Dense, whose kernel quantizes x in the same arithmetic, so the result is the same bits.
    Weights with nonzero zero points keep the portable MatMulInteger."""
    if node.op != "MatMulInteger" or len(node.inputs) < 3:
        return None
    producers = uses.producers
    quantized = producers.get(node.inputs[0])
    if (quantized is None or quantized.op != "DynamicQuantizeLinear"
            or node.inputs[2] != quantized.outputs[2]):
        return None
    weight = graph.tensors[node.inputs[1]]
    if not weight.is_constant or weight.dtype != "int8" or len(weight.shape) != 2:
        return None
    if len(node.inputs) > 3 and node.inputs[3]:
        zero_point = graph.tensors[node.inputs[3]]
        if not zero_point.is_constant or np.any(zero_point.data != 0):
            return None
    cast = uses.sole_reader(node.outputs[0])
    if cast is None or cast.op != "Cast" or int(cast.attrs.get("to", 0)) != 1:  # FLOAT
        return None
    rescale = uses.sole_reader(cast.outputs[0])
    if rescale is None or rescale.op != "Mul":
        return None
    scales = producers.get(other_input(rescale, cast.outputs[0]) or "")
    if scales is None or scales.op != "Mul" or quantized.outputs[1] not in scales.inputs:
        return None
    weight_scale = graph.tensors[other_input(scales, quantized.outputs[1]) or ""]
    n = weight.shape[1]
    if (not weight_scale.is_constant or weight_scale.dtype != "float32"
            or weight_scale.size not in (1, n) or len(weight_scale.shape) > 1
            or graph.tensors[rescale.outputs[0]].shape != graph.tensors[node.outputs[0]].shape):
        return None
    name = f"{weight.name}::scale"
    while name in graph.tensors:
        name += "'"
    per_column = np.broadcast_to(weight_scale.data.reshape(-1), (n,)).astype(np.float32)
    graph.tensors[name] = Tensor(name, (n,), "float32", per_column)
    attrs = dict(dense_attrs(source_op="MatMulInteger"), quantize="dynamic")
    dense = Node(DENSE, [quantized.inputs[0], weight.name, "", name], list(rescale.outputs),
                 attrs, node.name)
    return Rewrite(dense, (id(cast), id(rescale)))


def absorb_bias(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """Dense without C, then Add of a constant that varies at most along the last axis."""
    if node.op != DENSE or node.inputs[2]:
        return None
    add = uses.sole_reader(node.outputs[0])
    if add is None or add.op != "Add":
        return None
    other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
    bias = graph.tensors[other]
    out_shape = graph.tensors[node.outputs[0]].shape
    if not bias.is_constant or bias.dtype != "float32":
        return None
    if len(bias.shape) > len(out_shape) or any(d != 1 for d in bias.shape[:-1]):
        return None
    if bias.shape and bias.shape[-1] not in (1, out_shape[-1]):
        return None
    fused = Node(DENSE, [node.inputs[0], node.inputs[1], other, *node.inputs[3:]],
                 list(add.outputs), dict(node.attrs, beta=1.0), node.name)
    return Rewrite(fused, (id(add),))


def absorb_activation(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != DENSE or node.attrs["activation"]:
        return None
    act = uses.sole_reader(node.outputs[0])
    if act is None or act.op not in ACTIVATIONS + ("Gelu",):
        return None
    params = clip_bounds(graph, act) if act.op == "Clip" else ()
    if params is None:
        return None
    activation = act.op
    if act.op == "Gelu":
        approximate = act.attrs.get("approximate", "none")
        if approximate not in ("none", "tanh"):
            return None  # the kernel reports the bad attribute
        activation = "GeluTanh" if approximate == "tanh" else "Gelu"
    attrs = dict(node.attrs, activation=activation, activation_params=params)
    return Rewrite(Node(DENSE, list(node.inputs), list(act.outputs), attrs, node.name), (id(act),))


def dense_attrs(source_op: str, alpha=1.0, beta=1.0, trans_a=0, trans_b=0) -> dict:
    return {"alpha": alpha, "beta": beta, "trans_a": trans_a, "trans_b": trans_b,
            "activation": "", "activation_params": (), "source_op": source_op}
