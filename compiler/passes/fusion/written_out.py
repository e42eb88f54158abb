"""Operators exporters write out as several nodes, gathered back into one: LayerNorm before
opset 17, GELU through Erf, and the residual Add read only by a LayerNorm."""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.ops import ADD_LAYER_NORM
from sparsec.compiler.passes.fusion.match import is_constant, other_input, per_channel_constant
from sparsec.compiler.passes.fusion.rewrite import Rewrite, Uses


def layer_norm_from_parts(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """LayerNorm as exported before opset 17: mean = ReduceMean(x); d = x - mean;
    var = ReduceMean(d ^ 2); y = d / Sqrt(var + eps) [* gamma] [+ beta], all over the last axis:
    one LayerNormalization (the kernel's arithmetic is this one's, in one pass over a row).
    Matched at the first ReduceMean."""
    x = node.inputs[0] if node.op == "ReduceMean" else None
    if x is None or not _reduces_last_axis(graph, node):
        return None
    rank = len(graph.tensors[x].shape)
    sub = uses.sole_reader(node.outputs[0])
    if sub is None or sub.op != "Sub" or sub.inputs != [x, node.outputs[0]]:
        return None
    readers = uses.readers.get(sub.outputs[0], [])
    square = next((r for r in readers if r.op == "Pow"
                   and r.inputs[0] == sub.outputs[0] and is_constant(graph, r.inputs[1], 2.0)),
                  None)
    divide = next((r for r in readers if r.op == "Div" and r.inputs[0] == sub.outputs[0]), None)
    if (len(readers) != 2 or square is None or divide is None
            or sub.outputs[0] in uses.outputs):
        return None
    chain = [sub, square]
    variance = uses.sole_reader(square.outputs[0])
    if variance is None or variance.op != "ReduceMean" or not _reduces_last_axis(graph,
                                                                                  variance):
        return None
    plus_eps = uses.sole_reader(variance.outputs[0])
    epsilon = other_input(plus_eps, variance.outputs[0]) if plus_eps is not None else None
    eps = graph.tensors.get(epsilon) if epsilon else None
    if (plus_eps is None or plus_eps.op != "Add" or eps is None or not eps.is_constant
            or eps.size != 1):
        return None
    root = uses.sole_reader(plus_eps.outputs[0])
    if root is None or root.op != "Sqrt" or uses.sole_reader(root.outputs[0]) is not divide \
            or divide.inputs[1] != root.outputs[0]:
        return None
    chain += [variance, plus_eps, root, divide]
    width = graph.tensors[x].shape[-1]
    current, gamma, beta = divide, None, ""
    step = uses.sole_reader(current.outputs[0])
    if step is not None and step.op == "Mul":
        gamma = per_channel_constant(graph, other_input(step, current.outputs[0]), width)
        if gamma is not None:
            chain.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    if step is not None and step.op == "Add":
        bias = per_channel_constant(graph, other_input(step, current.outputs[0]), width)
        if bias is not None:
            beta = bias
            chain.append(step)
            current = step
    if graph.tensors[current.outputs[0]].shape != graph.tensors[x].shape:
        return None
    if gamma is None:
        gamma = f"{x}::layer_norm_scale"
        while gamma in graph.tensors:
            gamma += "'"
        graph.tensors[gamma] = Tensor(gamma, (width,), "float32", np.ones(width, np.float32))
    attrs = {"axis": rank - 1, "epsilon": float(eps.data.reshape(()))}
    norm = Node("LayerNormalization", [x, gamma, beta], list(current.outputs), attrs, node.name)
    return Rewrite(norm, tuple(id(n) for n in chain))


def _reduces_last_axis(graph: Graph, node: Node) -> bool:
    """A ReduceMean over exactly the last axis, keeping it (as a broadcastable 1)."""
    rank = len(graph.tensors[node.inputs[0]].shape)
    if len(node.inputs) > 1 and node.inputs[1]:
        axes_tensor = graph.tensors[node.inputs[1]]
        if not axes_tensor.is_constant:
            return False
        axes = [int(a) for a in axes_tensor.data.reshape(-1)]
    else:
        axes = list(node.attrs.get("axes", []))
    return (graph.tensors[node.inputs[0]].dtype == "float32" and rank >= 1
            and [a % rank for a in axes] == [rank - 1] and node.attrs.get("keepdims", 1) == 1)


def absorb_residual_add(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """Add of two equal-shape tensors whose only reader is a LayerNormalization (the residual
    connection before every norm of a transformer): one AddLayerNorm, no summed tensor."""
    if node.op != "Add" or len(node.inputs) != 2:
        return None
    norm = uses.sole_reader(node.outputs[0])
    a, b = (graph.tensors[name] for name in node.inputs)
    if (norm is None or norm.op != "LayerNormalization" or norm.inputs[0] != node.outputs[0]
            or a.shape != b.shape or a.dtype != b.dtype or a.is_constant or b.is_constant
            or any(out for out in norm.outputs[1:])):
        return None
    inputs = [node.inputs[0], node.inputs[1], *norm.inputs[1:3]]
    inputs += [""] * (4 - len(inputs))
    return Rewrite(Node(ADD_LAYER_NORM, inputs, norm.outputs[:1], dict(norm.attrs), norm.name),
                   (id(norm),))


def gelu_from_erf(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """x * 0.5 * (1 + erf(x / sqrt 2)) as exporters write GELU (Div or Mul by 1/sqrt 2, the
    two Muls in either order): one Gelu node. Matched at the Erf."""
    if node.op != "Erf":
        return None
    producers = uses.producers
    scaled = producers.get(node.inputs[0])
    if scaled is None or uses.sole_reader(scaled.outputs[0]) is not node:
        return None
    x = _scaled_input(graph, scaled, np.sqrt(2.0))
    if x is None or graph.tensors[x].dtype != "float32":
        return None
    plus_one = uses.sole_reader(node.outputs[0])
    if plus_one is None or plus_one.op != "Add" or not is_constant(
            graph, other_input(plus_one, node.outputs[0]), 1.0):
        return None
    first = uses.sole_reader(plus_one.outputs[0])
    if first is None or first.op != "Mul":
        return None
    other = other_input(first, plus_one.outputs[0])
    if other == x:  # (x * (1 + erf)) * 0.5
        last = uses.sole_reader(first.outputs[0])
        if last is None or last.op != "Mul" or not is_constant(
                graph, other_input(last, first.outputs[0]), 0.5):
            return None
        absorbed = (scaled, plus_one, first, last)
    else:  # (x * 0.5) * (1 + erf)
        half = producers.get(other)
        if (half is None or half.op != "Mul" or uses.sole_reader(half.outputs[0]) is not first
                or other_input(half, x) is None
                or not is_constant(graph, other_input(half, x), 0.5)):
            return None
        last = first
        absorbed = (scaled, plus_one, half, first)
    if graph.tensors[last.outputs[0]].shape != graph.tensors[x].shape:
        return None
    gelu = Node("Gelu", [x], list(last.outputs), {"approximate": "none"}, node.name)
    return Rewrite(gelu, tuple(id(n) for n in absorbed))


def _scaled_input(graph: Graph, node: Node, divisor: float) -> str | None:
    """The x of `x / divisor` or `x * (1 / divisor)` (float32 constants, to rounding)."""
    if node.op == "Div" and is_constant(graph, node.inputs[1], divisor):
        return node.inputs[0]
    if node.op == "Mul":
        for x, c in (node.inputs, node.inputs[::-1]):
            if is_constant(graph, c, 1 / divisor):
                return x
    return None
