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
read only by a LayerNormalization is part of an `AddLayerNorm` node.
Fusion never hides a value the graph returns: an intermediate that is a graph output or has
several readers stays materialised.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.ops import ACTIVATIONS, ADD_LAYER_NORM, ATTENTION, DENSE

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
    before: tuple[Node, ...] = ()  # new nodes the replacement reads, placed just before it


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


def dense_from_dynamic_quantization(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """What onnxruntime's quantize_dynamic writes for a MatMul: DynamicQuantizeLinear(x) ->
    MatMulInteger(x_q, W int8, x_zero_point, 0) -> Cast(float) -> Mul(x_scale * w_scale): one
    int8 Dense, whose kernel quantizes x in the same arithmetic, so the result is the same bits.
    Weights with nonzero zero points keep the portable MatMulInteger."""
    if node.op != "MatMulInteger" or len(node.inputs) < 3:
        return None
    producers = graph.producers()
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
    scales = producers.get(_other_input(rescale, cast.outputs[0]) or "")
    if scales is None or scales.op != "Mul" or quantized.outputs[1] not in scales.inputs:
        return None
    weight_scale = graph.tensors[_other_input(scales, quantized.outputs[1]) or ""]
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
    attrs = dict(_dense_attrs(source_op="MatMulInteger"), quantize="dynamic")
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


def fuse_attention(graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    """MatMul(A, B) [-> Mul/Div by a constant scalar] [-> Add mask] -> Softmax(last axis)
    -> MatMul(., V): one Attention node, when every intermediate has that single reader."""
    if node.op != "MatMul" or not _batched_float(graph, node):
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
        other = _other_input(step, current.outputs[0])
        value = graph.tensors[other] if other else None
        if (value is not None and value.is_constant and value.size == 1
                and value.dtype == "float32" and (step.op == "Mul" or step.inputs[0] != other)
                and len(value.shape) <= len(scores.shape)):
            scale_op, scale = step.op, float(value.data.reshape(()))
            absorbed.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    mask = ""
    if step is not None and step.op == "Add":
        other = _other_input(step, current.outputs[0])
        value = graph.tensors[other] if other else None
        if value is not None and value.dtype == "float32" and _broadcasts_to(value.shape,
                                                                              scores.shape):
            mask = other
            absorbed.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    if step is None or step.op != "Softmax" or not _softmax_over_last_axis(graph, step):
        return None
    absorbed.append(step)
    probabilities, nan_guard = step.outputs[0], _nan_guard(graph, step, uses)
    if nan_guard:
        absorbed += nan_guard
        probabilities = nan_guard[-1].outputs[0]
    context = uses.sole_reader(probabilities)
    if context is None or context.op != "MatMul" or context.inputs[0] != probabilities \
            or context.inputs[1] == probabilities or not _batched_float(graph, context):
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
    producers = graph.producers()
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
            or not _is_constant(graph, where.inputs[1], 0.0)
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
    producers = graph.producers()
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
                    and _broadcasts_to(graph.tensors[t].shape, scores_shape)
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
    producers = graph.producers()
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
                   and r.inputs[0] == sub.outputs[0] and _is_constant(graph, r.inputs[1], 2.0)),
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
    epsilon = _other_input(plus_eps, variance.outputs[0]) if plus_eps is not None else None
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
        gamma = _per_channel_constant(graph, _other_input(step, current.outputs[0]), width)
        if gamma is not None:
            chain.append(step)
            current, step = step, uses.sole_reader(step.outputs[0])
    if step is not None and step.op == "Add":
        bias = _per_channel_constant(graph, _other_input(step, current.outputs[0]), width)
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


def _per_channel_constant(graph: Graph, name: str | None, width: int) -> str | None:
    """A float32 constant that varies at most along the last axis ([C], [1, C], ...)."""
    tensor = graph.tensors.get(name) if name else None
    if (tensor is None or not tensor.is_constant or tensor.dtype != "float32"
            or tensor.size != width or (tensor.shape and tensor.shape[-1] != width)):
        return None
    return name


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
    producers = graph.producers()
    scaled = producers.get(node.inputs[0])
    if scaled is None or uses.sole_reader(scaled.outputs[0]) is not node:
        return None
    x = _scaled_input(graph, scaled, np.sqrt(2.0))
    if x is None or graph.tensors[x].dtype != "float32":
        return None
    plus_one = uses.sole_reader(node.outputs[0])
    if plus_one is None or plus_one.op != "Add" or not _is_constant(
            graph, _other_input(plus_one, node.outputs[0]), 1.0):
        return None
    first = uses.sole_reader(plus_one.outputs[0])
    if first is None or first.op != "Mul":
        return None
    other = _other_input(first, plus_one.outputs[0])
    if other == x:  # (x * (1 + erf)) * 0.5
        last = uses.sole_reader(first.outputs[0])
        if last is None or last.op != "Mul" or not _is_constant(
                graph, _other_input(last, first.outputs[0]), 0.5):
            return None
        absorbed = (scaled, plus_one, first, last)
    else:  # (x * 0.5) * (1 + erf)
        half = producers.get(other)
        if (half is None or half.op != "Mul" or uses.sole_reader(half.outputs[0]) is not first
                or _other_input(half, x) is None
                or not _is_constant(graph, _other_input(half, x), 0.5)):
            return None
        last = first
        absorbed = (scaled, plus_one, half, first)
    if graph.tensors[last.outputs[0]].shape != graph.tensors[x].shape:
        return None
    gelu = Node("Gelu", [x], list(last.outputs), {"approximate": "none"}, node.name)
    return Rewrite(gelu, tuple(id(n) for n in absorbed))


def _scaled_input(graph: Graph, node: Node, divisor: float) -> str | None:
    """The x of `x / divisor` or `x * (1 / divisor)` (float32 constants, to rounding)."""
    if node.op == "Div" and _is_constant(graph, node.inputs[1], divisor):
        return node.inputs[0]
    if node.op == "Mul":
        for x, c in (node.inputs, node.inputs[::-1]):
            if _is_constant(graph, c, 1 / divisor):
                return x
    return None


def _is_constant(graph: Graph, name: str | None, value: float) -> bool:
    """A scalar constant equal to `value` rounded to float32 (within one ulp: exporters
    round sqrt(2) and 1/sqrt(2) either way)."""
    tensor = graph.tensors.get(name) if name else None
    if tensor is None or not tensor.is_constant or tensor.size != 1:
        return False
    stored = np.float32(tensor.data.reshape(()))
    return bool(abs(stored - np.float32(value)) <= np.spacing(np.float32(value)))


def _batched_float(graph: Graph, node: Node) -> bool:
    """A matrix product of float32 operands with equal batch dimensions (none broadcast)."""
    a, b = (graph.tensors[name] for name in node.inputs[:2])
    return (a.dtype == b.dtype == "float32" and len(a.shape) >= 3 and a.shape[:-2] == b.shape[:-2]
            and a.shape[-1] == b.shape[-2] and 0 not in a.shape + b.shape)


def _other_input(node: Node, name: str) -> str | None:
    if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def _softmax_over_last_axis(graph: Graph, node: Node) -> bool:
    rank = len(graph.tensors[node.inputs[0]].shape)
    # before opset 13 Softmax flattened to 2-D at `axis` (default 1): per-row only at rank - 1
    axis = int(node.attrs.get("axis", -1 if graph.opset >= 13 else 1))
    return axis in (-1, rank - 1)


def _dense_attrs(source_op: str, alpha=1.0, beta=1.0, trans_a=0, trans_b=0) -> dict:
    return {"alpha": alpha, "beta": beta, "trans_a": trans_a, "trans_b": trans_b,
            "activation": "", "activation_params": (), "source_op": source_op}


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
                graph.nodes[index:index + 1] = [*rewrite.before, rewrite.replacement]
                graph.nodes = [n for n in graph.nodes if id(n) not in rewrite.removed]
                changed = True
                break
            if changed:
                break
    remove_dead_nodes(graph)
    graph.nodes = _in_dependency_order(graph.nodes)
    graph.remove_unused()
    return graph


def _in_dependency_order(nodes: list[Node]) -> list[Node]:
    """The nodes reordered as little as possible so that each follows what it reads. A
    replacement takes the place of the node it was matched at, and can read a value made
    further down: the padding mask torch's TorchScript exporter writes between the scores'
    MatMul and their Add."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.outputs if out}
    waiting = [sum(1 for name in set(node.inputs) if name in producer) for node in nodes]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.inputs):
            if name in producer:
                readers.setdefault(producer[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for reader in readers.get(i, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    return order


def remove_dead_nodes(graph: Graph) -> None:
    """Drop nodes none of whose outputs is read or returned (what a rewrite left behind, such
    as a DynamicQuantizeLinear whose MatMulIntegers all became Dense); every op is pure."""
    while True:
        read = {name for node in graph.nodes for name in node.inputs if name}
        read |= set(graph.outputs)
        alive = [n for n in graph.nodes if any(out in read for out in n.outputs if out)]
        if len(alive) == len(graph.nodes):
            return
        graph.nodes = alive


def run(graph: Graph, ctx) -> Graph:
    graph = apply_rules(graph.copy(), RULES)
    uses = Uses(graph)
    for index, node in enumerate(graph.nodes):
        if node.op == "Softmax" and graph.tensors[node.inputs[0]].dtype == "float32":
            why = unfused_attention(graph, node, uses)
            graph.nodes[index] = Node(node.op, node.inputs, node.outputs,
                                      dict(node.attrs, unfused=why), node.name)
            ctx.log.append(f"{NAME}: {why}")
    return graph


def unfused_attention(graph: Graph, softmax: Node, uses: Uses) -> str:
    """Why a Softmax left after fusion is not part of an Attention kernel: the first node, in
    the order fuse_attention looks, that breaks MatMul [-> Mul/Div by a constant scalar]
    [-> Add mask] -> Softmax(last axis) [-> NaN guard] -> MatMul (for --report)."""
    head = f"attention at Softmax {softmax.name!r} not fused: "
    if not _softmax_over_last_axis(graph, softmax):
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
            or not _batched_float(graph, context):
        return head + (f"node {context.name!r} (op {context.op}) reads the probabilities, "
                       "where a float32 MatMul by V with the scores' batch dimensions was "
                       "expected")
    producers, current, reader, stages = graph.producers(), softmax.inputs[0], softmax, "AS"
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
            mask = graph.tensors[_other_input(node, scores[0]) or scores[0]]
            if mask.dtype != "float32" or not _broadcasts_to(mask.shape,
                                                             graph.tensors[current].shape):
                return head + (f"Add {node.name!r} adds {mask.name!r} ({mask.dtype}"
                               f"{list(mask.shape)}), which does not broadcast to the scores")
            current, stages = scores[0], "S"
        elif node.op in ("Mul", "Div") and "S" in stages:
            value = graph.tensors.get(_other_input(node, node.inputs[0]) or "")
            if value is None or not value.is_constant or value.size != 1:
                return head + f"{node.op} {node.name!r} scales by a value that is not a " \
                              "constant scalar"
            current, stages = node.inputs[0] if value.name != node.inputs[0] \
                else node.inputs[1], ""
        elif node.op == "MatMul":
            if not _batched_float(graph, node):
                shapes = [list(graph.tensors[n].shape) for n in node.inputs]
                return head + (f"MatMul {node.name!r} multiplies {shapes}: the kernel needs "
                               "float32 operands with equal batch dimensions")
            return head + (f"the pattern matched from MatMul {node.name!r}, but V's batch "
                           "dimensions differ from the scores'")
        else:
            return head + (f"node {node.name!r} (op {node.op}) computes the scores, where "
                           "MatMul [-> Mul/Div by a constant] [-> Add mask] was expected")
        reader = node

