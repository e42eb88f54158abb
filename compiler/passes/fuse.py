"""Fuse matrix products with their bias and activation into one `Dense` node.

Requires: detect_sparsity has run (weights are K x N with sparsity info).
Establishes: every MatMul with a constant 2-D weight, every Gemm, and every dynamically
quantized MatMulInteger chain as onnxruntime exports it (int8 weights) is a `Dense` node
`act(alpha * op(A) . B + beta * C)`; no Add of a constant per-column bias and no activation
(Relu, Sigmoid, Tanh, constant Clip, Gelu, and GELU written with Erf) follows a Dense whose
epilogue could absorb it; LayerNorm written as ReduceMean/Sub/Pow/Sqrt/Div is one
LayerNormalization; every
scaled, masked softmax between two batched MatMuls (attention) is one `Attention` node, which
reads Q and V and writes its output through the head-splitting Transposes around it; an Add
read only by a LayerNormalization is part of an `AddLayerNorm` node; no Cast to the type its
input already has is left (one the graph returns stays).
Fusion never hides a value the graph returns: an intermediate that is a graph output or has
several readers stays materialised.
"""

from __future__ import annotations

from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.passes.fusion.attention import (
    absorb_head_transposes,
    combine_masks,
    fuse_attention,
    unfused_attention,
)
from sparsec.compiler.passes.fusion.dense import (
    absorb_activation,
    absorb_bias,
    dense_from_dynamic_quantization,
    gemm_to_dense,
    matmul_to_dense,
)
from sparsec.compiler.passes.fusion.no_ops import drop_no_op_casts
from sparsec.compiler.passes.fusion.rewrite import Rule, Uses, apply_rules
from sparsec.compiler.passes.fusion.written_out import (
    absorb_residual_add,
    gelu_from_erf,
    layer_norm_from_parts,
)

NAME = "fuse"

RULES = [
    Rule("matmul-to-dense", matmul_to_dense),
    Rule("gemm-to-dense", gemm_to_dense),
    Rule("dense-from-dynamic-quantization", dense_from_dynamic_quantization),
    Rule("gelu-from-erf", gelu_from_erf),
    Rule("layer-norm-from-parts", layer_norm_from_parts),
    Rule("absorb-bias", absorb_bias),
    Rule("absorb-activation", absorb_activation),
    Rule("combine-masks", combine_masks),
    Rule("fuse-attention", fuse_attention),
    Rule("absorb-head-transposes", absorb_head_transposes),
    Rule("absorb-residual-add", absorb_residual_add),
]


def run(graph: Graph, ctx) -> Graph:
    graph = graph.copy()
    drop_no_op_casts(graph)
    graph = apply_rules(graph, RULES)
    uses = Uses(graph)
    for index, node in enumerate(graph.nodes):
        if node.op == "Softmax" and graph.tensors[node.inputs[0]].dtype == "float32":
            why = unfused_attention(graph, node, uses)
            graph.nodes[index] = Node(node.op, node.inputs, node.outputs,
                                      dict(node.attrs, unfused=why), node.name)
            ctx.log.append(f"{NAME}: {why}")
    return graph
