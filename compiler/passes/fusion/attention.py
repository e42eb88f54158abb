"""Scaled, masked softmax between two batched MatMuls becomes one `Attention` node, which
reads and writes through the head-splitting Transposes around it."""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.ops import ATTENTION
from sparsec.compiler.passes.fusion.match import (
    batched_float,
    broadcasts_to,
    is_constant,
    other_input,
    softmax_over_last_axis,
)
from sparsec.compiler.passes.fusion.rewrite import Rewrite, Uses


def fuse_attention(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """MatMul(A, B) [-> Mul/Div by a constant scalar] [-> Add mask] -> Softmax(last axis)
    -> MatMul(., V): one Attention node, when every intermediate has that single reader."""
    if node.op != "MatMul" or not batched_float(graph, node):
        return None
    scores = graph.tensors[node.outputs[0]]
    absorbed, current = [], node
    step = uses.sole_reader(current.outputs[0])
    scale_op, scale = "", 1.0
    # The kernel applies one scale: pre-scaled operands only where the scores have no other.
    operands = {} if step is not None and step.op in ("Mul", "Div") \
        else _prescaled_operands(graph, node, uses)
    if operands:
        absorbed += [producer for _, producer, _ in operands.values()]
        scale_op, scale = "Mul", float(np.prod([factor for factor, _, _ in operands.values()],
                                               dtype=np.float64))
    if step is not None and step.op in ("Mul", "Div"):
        other = other_input(step, current.outputs[0])
        value = graph.tensors[other] if other else None
        if (value is not None and value.is_constant and value.size == 1
                and value.dtype == "float32" and (step.op == "Mul" or step.inputs[0] != other)
                and len(value.shape) <= len(scores.shape)):
            scale_op, scale = step.op, float(value.data.reshape(()))
            absorbed.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    mask = ""
    if step is not None and step.op == "Add":
        other = other_input(step, current.outputs[0])
        value = graph.tensors[other] if other else None
        if value is not None and value.dtype == "float32" and broadcasts_to(value.shape,
                                                                              scores.shape):
            mask = other
            absorbed.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    if step is None or step.op != "Softmax" or not softmax_over_last_axis(graph, step):
        return None
    absorbed.append(step)
    probabilities, nan_guard = step.outputs[0], _nan_guard(graph, step, uses)
    if nan_guard:
        absorbed += nan_guard
        probabilities = nan_guard[-1].outputs[0]
    context = uses.sole_reader(probabilities)
    if context is None or context.op != "MatMul" or context.inputs[0] != probabilities \
            or context.inputs[1] == probabilities or not batched_float(graph, context):
        return None
    if graph.tensors[context.inputs[1]].shape[:-2] != scores.shape[:-2]:
        return None
    attrs = {"scale_op": scale_op, "scale": scale, "source_op": "MatMul+Softmax+MatMul"}
    if nan_guard:
        attrs["nan_to_zero"] = True
    a, b = (operands[i][2] if i in operands else node.inputs[i] for i in (0, 1))
    fused = Node(ATTENTION, [a, b, context.inputs[1], mask], list(context.outputs), attrs,
                 node.name)
    return Rewrite(fused, tuple(id(n) for n in absorbed + [context]))


def _prescaled_operands(graph: Graph, node: Node, uses: Uses) -> dict:
    """scaled_dot_product_attention as torch exports it scales Q and K^T each by
    1/sqrt(sqrt(head size)) before the product: {operand index: (factor, its Mul, the
    unscaled operand)} when both
    are such a Mul read only by this MatMul (the kernel applies the product of the two
    factors to the scores: one rounding where there were two; 0.5 * 0.5 at head size 16 is
    exact)."""
    producers = uses.producers
    found = {}
    for index in (0, 1):
        mul = producers.get(node.inputs[index])
        if mul is None or mul.op != "Mul" or uses.sole_reader(mul.outputs[0]) is not node:
            continue
        for x, c in (mul.inputs, mul.inputs[::-1]):
            factor = graph.tensors.get(c)
            if (factor is not None and factor.is_constant and factor.size == 1
                    and factor.dtype == "float32" and not graph.tensors[x].is_constant
                    and graph.tensors[x].shape == graph.tensors[mul.outputs[0]].shape):
                found[index] = (float(factor.data.reshape(())), mul, x)
                break
    return found if len(found) == 2 else {}


def _nan_guard(graph: Graph, softmax: Node, uses: Uses) -> list[Node]:
    """Where(IsNaN(p), 0, p) on the probabilities p, which torch's exporters put after sdpa's
    softmax so that a row whose keys are all masked (-inf) gives zeros, not NaN: [IsNaN,
    Where] when p is read by exactly those two, else []."""
    readers = uses.readers.get(softmax.outputs[0], [])
    isnan = next((r for r in readers if r.op == "IsNaN"), None)
    where = next((r for r in readers if r.op == "Where"), None)
    if (len(readers) != 2 or isnan is None or where is None
            or softmax.outputs[0] in uses.outputs
            or where.inputs != [isnan.outputs[0], where.inputs[1], softmax.outputs[0]]
            or uses.sole_reader(isnan.outputs[0]) is not where
            or not is_constant(graph, where.inputs[1], 0.0)
            or graph.tensors[where.outputs[0]].shape != graph.tensors[softmax.outputs[0]].shape):
        return []
    return [isnan, where]


def combine_masks(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """(scores + bias) + mask before a Softmax (MPNet's relative position bias, then the
    padding mask): scores + (bias + mask), so that attention sees one additive mask. The
    small sum of the two runs as its own Add; with a mask of 0 and -inf (or the most negative
    float) both orders give the same probabilities."""
    if node.op != "Add" or len(node.inputs) != 2:
        return None
    softmax = uses.sole_reader(node.outputs[0])
    if softmax is None or softmax.op != "Softmax":
        return None
    producers = uses.producers
    for inner_out, mask in (node.inputs, node.inputs[::-1]):
        inner = producers.get(inner_out)
        if inner is None or inner.op != "Add" or uses.sole_reader(inner_out) is not node:
            continue
        scores_shape = graph.tensors[node.outputs[0]].shape
        for scores, bias in (inner.inputs, inner.inputs[::-1]):
            source = producers.get(scores)
            if source is None or source.op not in ("MatMul", "Mul", "Div"):
                continue
            if graph.tensors[scores].shape != scores_shape or not all(
                    graph.tensors[t].dtype == "float32"
                    and broadcasts_to(graph.tensors[t].shape, scores_shape)
                    for t in (bias, mask)):
                continue
            shape = tuple(np.broadcast_shapes(graph.tensors[bias].shape,
                                              graph.tensors[mask].shape))
            name = f"{node.outputs[0]}::mask"
            while name in graph.tensors:
                name += "'"
            graph.tensors[name] = Tensor(name, shape, "float32")
            combined = Node("Add", [bias, mask], [name], {}, f"{node.name}::mask")
            return Rewrite(Node("Add", [scores, name], list(node.outputs), {}, node.name),
                           (id(inner),), (combined,))
    return None


def absorb_head_transposes(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """Attention reads Q and V through the Transposes that split heads, and writes through the
    Transpose that merges them, as strided views: no tensor for any of them. V and the output
    keep their last axis last (the kernel loads and stores rows of them as vectors); K's
    transpose (keys last) stays, as the kernel loads rows of keys."""
    if node.op != ATTENTION:
        return None
    producers = uses.producers
    inputs, attrs, removed = list(node.inputs), dict(node.attrs), []
    for index, key, last_fixed in ((0, "a_perm", False), (2, "v_perm", True)):
        source = producers.get(inputs[index])
        if (key not in attrs and source is not None and source.op == "Transpose"
                and uses.sole_reader(inputs[index]) is node):
            perm = _perm(graph, source)
            if not last_fixed or perm[-1] == len(perm) - 1:
                inputs[index], attrs[key] = source.inputs[0], perm
                removed.append(source)
    outputs = list(node.outputs)
    merge = uses.sole_reader(outputs[0])
    if "y_perm" not in attrs and merge is not None and merge.op == "Transpose":
        perm = _perm(graph, merge)
        if perm[-1] == len(perm) - 1:
            outputs, attrs["y_perm"] = list(merge.outputs), perm
            removed.append(merge)
    if not removed:
        return None
    return Rewrite(Node(ATTENTION, inputs, outputs, attrs, node.name),
                   tuple(id(n) for n in removed))


def _perm(graph: Graph, transpose: Node) -> tuple[int, ...]:
    rank = len(graph.tensors[transpose.inputs[0]].shape)
    perm = transpose.attrs.get("perm")
    return tuple(int(p) for p in perm) if perm is not None else tuple(range(rank))[::-1]


def unfused_attention(graph: Graph, softmax: Node, uses: Uses) -> str:
    """Why a Softmax left after fusion is not part of an Attention kernel: the first node, in
    the order fuse_attention looks, that breaks MatMul [-> Mul/Div by a constant scalar]
    [-> Add mask] -> Softmax(last axis) [-> NaN guard] -> MatMul (for --report)."""
    head = f"attention at Softmax {softmax.name!r} not fused: "
    if not softmax_over_last_axis(graph, softmax):
        return head + "the Softmax is not over the last axis"
    probabilities, guard = softmax.outputs[0], _nan_guard(graph, softmax, uses)
    if guard:
        probabilities = guard[-1].outputs[0]
    context = uses.sole_reader(probabilities)
    if context is None:
        readers = uses.readers.get(probabilities, [])
        where = "returned by the graph" if probabilities in uses.outputs else "read by " + (
            ", ".join(f"{r.name!r} (op {r.op})" for r in readers) or "nothing")
        return head + f"the probabilities are {where}; the kernel needs one MatMul to read them"
    if context.op != "MatMul" or context.inputs[0] != probabilities \
            or not batched_float(graph, context):
        return head + (f"node {context.name!r} (op {context.op}) reads the probabilities, "
                       "where a float32 MatMul by V with the scores' batch dimensions was "
                       "expected")
    producers, current, reader, stages = uses.producers, softmax.inputs[0], softmax, "AS"
    while True:
        node = producers.get(current)
        if node is None:
            return head + f"the scores {current!r} are an input or constant, not a MatMul"
        if uses.sole_reader(current) is not reader:
            return head + f"{current!r} (from {node.name!r}, op {node.op}) is also read " \
                          "elsewhere or returned, so it cannot stay inside the kernel"
        if node.op == "Add" and "A" in stages:
            scores = [n for n in node.inputs if n in producers
                      and producers[n].op in ("MatMul", "Mul", "Div", "Add")]
            if len(scores) != 1:
                return head + f"Add {node.name!r} adds two values neither of which is a mask"
            mask = graph.tensors[other_input(node, scores[0]) or scores[0]]
            if mask.dtype != "float32" or not broadcasts_to(mask.shape,
                                                             graph.tensors[current].shape):
                return head + (f"Add {node.name!r} adds {mask.name!r} ({mask.dtype}"
                               f"{list(mask.shape)}), which does not broadcast to the scores")
            current, stages = scores[0], "S"
        elif node.op in ("Mul", "Div") and "S" in stages:
            value = graph.tensors.get(other_input(node, node.inputs[0]) or "")
            if value is None or not value.is_constant or value.size != 1:
                return head + f"{node.op} {node.name!r} scales by a value that is not a " \
                              "constant scalar"
            current, stages = node.inputs[0] if value.name != node.inputs[0] \
                else node.inputs[1], ""
        elif node.op == "MatMul":
            if not batched_float(graph, node):
                shapes = [list(graph.tensors[n].shape) for n in node.inputs]
                return head + (f"MatMul {node.name!r} multiplies {shapes}: the kernel needs "
                               "float32 operands with equal batch dimensions")
            return head + (f"the pattern matched from MatMul {node.name!r}, but V's batch "
                           "dimensions differ from the scores'")
        else:
            return head + (f"node {node.name!r} (op {node.op}) computes the scores, where "
                           "MatMul [-> Mul/Div by a constant] [-> Add mask] was expected")
        reader = node
