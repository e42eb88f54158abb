"""Fuse matrix products with their bias and activation into one `Dense` node.

Requires: detect_sparsity has run (weights are K x N with sparsity info).
Establishes: every MatMul with a constant 2-D weight and every Gemm is a `Dense` node
`act(alpha * op(A) . B + beta * C)`; no Add of a constant per-column bias and no activation
(Relu, Sigmoid, Tanh, constant Clip) follows a Dense whose epilogue could absorb it.
Fusion never hides a value the graph returns: an intermediate that is a graph output or has
several readers stays materialised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.ops import ACTIVATIONS, DENSE

NAME = "fuse"


@dataclass(frozen=True)
class Rule:
    """A named rewrite: returns the nodes that replace `node` (and the consumer it swallowed)
    or None when it does not apply."""

    name: str
    apply: Callable[[Graph, Node, Uses], Rewrite | None]


@dataclass(frozen=True)
class Rewrite:
    replacement: Node
    removed: tuple[int, ...]  # ids of nodes absorbed into the replacement


class Uses:
    """Who reads each tensor, and whether the graph returns it."""

    def __init__(self, graph: Graph):
        self.readers = graph.consumers()
        self.outputs = set(graph.outputs)

    def sole_reader(self, tensor: str) -> Node | None:
        readers = self.readers.get(tensor, [])
        if len(readers) == 1 and tensor not in self.outputs:
            return readers[0]
        return None


def matmul_to_dense(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != "MatMul":
        return None
    weight = graph.tensors[node.inputs[1]]
    a = graph.tensors[node.inputs[0]]
    if not weight.is_constant or len(weight.shape) != 2 or len(a.shape) < 2:
        return None
    return Rewrite(Node(DENSE, [node.inputs[0], node.inputs[1], ""], list(node.outputs),
                        _dense_attrs(source_op="MatMul"), node.name), ())


def gemm_to_dense(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != "Gemm":
        return None
    inputs = list(node.inputs) + [""] * (3 - len(node.inputs))
    attrs = _dense_attrs(source_op="Gemm", alpha=float(node.attrs.get("alpha", 1.0)),
                         beta=float(node.attrs.get("beta", 1.0)),
                         trans_a=int(node.attrs.get("transA", 0)),
                         trans_b=int(node.attrs.get("transB", 0)))
    return Rewrite(Node(DENSE, inputs, list(node.outputs), attrs, node.name), ())


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
    fused = Node(DENSE, [node.inputs[0], node.inputs[1], other], list(add.outputs),
                 dict(node.attrs, beta=1.0), node.name)
    return Rewrite(fused, (id(add),))


def absorb_activation(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    if node.op != DENSE or node.attrs["activation"]:
        return None
    act = uses.sole_reader(node.outputs[0])
    if act is None or act.op not in ACTIVATIONS:
        return None
    params = clip_bounds(graph, act) if act.op == "Clip" else ()
    if params is None:
        return None
    attrs = dict(node.attrs, activation=act.op, activation_params=params)
    return Rewrite(Node(DENSE, list(node.inputs), list(act.outputs), attrs, node.name), (id(act),))


def clip_bounds(graph: Graph, node: Node) -> tuple[float, float] | None:
    """Clip's (min, max) when known at compile time: attributes before opset 11, inputs after."""
    if graph.opset < 11:
        return (float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf)))
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[index] if len(node.inputs) > index else ""
        if not name:
            bounds.append(default)
        elif graph.tensors[name].is_constant:
            bounds.append(float(graph.tensors[name].data))
        else:
            return None
    return tuple(bounds)


def _dense_attrs(source_op: str, alpha=1.0, beta=1.0, trans_a=0, trans_b=0) -> dict:
    return {"alpha": alpha, "beta": beta, "trans_a": trans_a, "trans_b": trans_b,
            "activation": "", "activation_params": (), "source_op": source_op}


RULES = [
    Rule("matmul-to-dense", matmul_to_dense),
    Rule("gemm-to-dense", gemm_to_dense),
    Rule("absorb-bias", absorb_bias),
    Rule("absorb-activation", absorb_activation),
]


def apply_rules(graph: Graph, rules: list[Rule]) -> Graph:
    """Apply rules until none fires; each firing replaces one node and drops what it absorbed."""
    changed = True
    while changed:
        changed = False
        uses = Uses(graph)
        for index, node in enumerate(graph.nodes):
            for rule in rules:
                rewrite = rule.apply(graph, node, uses)
                if rewrite is None:
                    continue
                graph.nodes[index] = rewrite.replacement
                graph.nodes = [n for n in graph.nodes if id(n) not in rewrite.removed]
                changed = True
                break
            if changed:
                break
    graph.remove_unused()
    return graph


def run(graph: Graph, ctx) -> Graph:
    return apply_rules(graph.copy(), RULES)

