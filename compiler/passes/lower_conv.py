"""Rewrite every Conv into the matrix products and copies sparsec already compiles.

Requires: constants are folded. Constant weights are rewritten at compile time (folded
BatchNormalization, block-diagonal matrices); a run-time weight is reshaped and transposed on
each run, except a grouped conv's, which is refused.
Establishes: no Conv is left. A 2-D convolution (1-D ones are 2-D with a height of 1) over
X [N, C, H, W] with weight W [M, C/g, kh, kw] is

    Y = reshape(transpose(act(patches^T . Wk + b)))

where `patches` is X itself for a 1x1, stride-1, unpadded conv and an Im2Col node otherwise,
and Wk the weight as a (kh*kw*C) x M matrix, taps first (block-diagonal for grouped convs, so
the sparse kernels skip the zero blocks like any other zeros). A BatchNormalization that
only this Conv feeds is folded into the weight and bias, and the activation after them (Relu,
Clip, Sigmoid, Tanh) moves before the transposes, so `fuse` turns the product, bias and
activation into one Dense node. At batch 1 both transposes are [1, 0] flips of a 2-D
matrix: choose_layouts then hands the Dense its activations channels-first (feature-major)
and they cost nothing. A depthwise conv (one filter per channel) becomes one DepthwiseConv
node instead, with a Relu or Clip after it folded in.
"""

from __future__ import annotations

import math

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.ops import DEPTHWISE_CONV, IM2COL
from sparsec.compiler.passes.fusion.match import clip_bounds
from sparsec.errors import UnsupportedOperatorError

NAME = "lower-conv"

# Activations a Dense epilogue applies (fuse absorbs them), and those DepthwiseConv applies.
DENSE_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh")
DEPTHWISE_ACTIVATIONS = ("Relu", "Clip")


def run(graph: Graph, ctx) -> Graph:
    if not any(node.op == "Conv" for node in graph.nodes):
        return graph
    graph = graph.copy()
    problems = [problem for node in graph.nodes if node.op == "Conv"
                for problem in [_unsupported(graph, node)] if problem]
    if problems:
        raise UnsupportedOperatorError(f"{len(problems)} Conv node(s) cannot be compiled: "
                                       + "; ".join(problems))
    nodes: list[Node] = []
    absorbed: set[int] = set()
    readers = graph.consumers()
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        if node.op != "Conv":
            nodes.append(node)
            continue
        conv = Conv(graph, node)
        tail = _fold_batch_norm(graph, conv, readers)
        activation = _sole_reader(graph, tail.outputs[0], readers)
        if tail is not node:
            absorbed.add(id(tail))
        if conv.depthwise:
            if activation is not None and not _depthwise_activation(graph, activation):
                activation = None
        elif activation is not None and activation.op not in DENSE_ACTIVATIONS:
            activation = None
        if activation is not None:
            absorbed.add(id(activation))
        output = (activation or tail).outputs[0]
        lowered = (_depthwise(graph, conv, activation, output) if conv.depthwise
                   else _as_dense(graph, conv, activation, output))
        nodes.extend(lowered)
        ctx.log.append(f"{NAME}: {node.name or '?'} -> "
                       + " + ".join(n.op for n in lowered))
    graph.nodes = nodes
    graph.remove_unused()
    return graph


class Conv:
    """One Conv node's geometry, with auto_pad resolved and 1-D convs seen as 2-D."""

    def __init__(self, graph: Graph, node: Node):
        self.node = node
        x, w = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
        self.one_d = len(x.shape) == 3
        self.n, self.c, self.h, self.w = (x.shape[0], x.shape[1], 1, x.shape[2]) \
            if self.one_d else x.shape
        shape = (w.shape[0], w.shape[1], 1, w.shape[2]) if self.one_d else w.shape
        self.m, (self.kh, self.kw) = shape[0], shape[2:]
        # Constant weights and bias are rewritten (BatchNormalization folded, block-diagonal
        # matrices); run-time ones (None here) are read where they arrive.
        self.weight = (w.data.astype(np.float32).reshape(shape) if w.is_constant else None)
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        self.bias_input = bias
        self.bias = (graph.tensors[bias].data.astype(np.float32) if bias
                     and graph.tensors[bias].is_constant else None)
        if not bias:
            self.bias = np.zeros(self.m, np.float32)
        self.has_bias = bool(bias)
        attrs = node.attrs
        self.group = int(attrs.get("group", 1))
        strides = list(attrs.get("strides", [1] * (2 - self.one_d)))
        dilations = list(attrs.get("dilations", [1] * (2 - self.one_d)))
        self.strides = ([1] + strides) if self.one_d else strides
        self.dilations = ([1] + dilations) if self.one_d else dilations
        out = graph.tensors[node.outputs[0]].shape
        self.ho, self.wo = (1, out[2]) if self.one_d else (out[2], out[3])
        self.pads = self._pads(attrs)

    def _pads(self, attrs) -> list[int]:
        """(top, left, bottom, right)."""
        auto = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto, bytes):
            auto = auto.decode()
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, stride, dilation, k in ((self.h, self.strides[0], self.dilations[0],
                                               self.kh),
                                              (self.w, self.strides[1], self.dilations[1],
                                               self.kw)):
                total = max(0, (math.ceil(size / stride) - 1) * stride
                            + (k - 1) * dilation + 1 - size)
                small, large = total // 2, total - total // 2
                pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
            return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        if auto == "VALID":
            return [0, 0, 0, 0]
        pads = list(attrs.get("pads", [0] * (4 - 2 * self.one_d)))
        return [0, pads[0], 0, pads[1]] if self.one_d else pads

    @property
    def depthwise(self) -> bool:
        return self.group == self.c == self.m and self.group > 1

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded conv: its patch matrix is X itself."""
        return ((self.kh, self.kw) == (1, 1) and self.strides == [1, 1]
                and not any(self.pads))

    def geometry(self) -> dict:
        return {"kernel": [self.kh, self.kw], "strides": self.strides,
                "dilations": self.dilations, "pads": self.pads, "out": [self.ho, self.wo]}

    def matrix(self) -> np.ndarray:
        """The weight as (kh*kw*C) x M, row (i*kw + j)*C + c (Im2Col's tap-major order);
        block-diagonal by group within each tap."""
        taps = self.kh * self.kw
        cg, mg = self.c // self.group, self.m // self.group
        k = np.zeros((taps, self.c, self.m), np.float32)
        for g in range(self.group):
            block = self.weight[g * mg:(g + 1) * mg].reshape(mg, cg, taps)
            k[:, g * cg:(g + 1) * cg, g * mg:(g + 1) * mg] = block.transpose(2, 1, 0)
        return k.reshape(taps * self.c, self.m)


def _unsupported(graph: Graph, node: Node) -> str:
    label = repr(node.name or "<unnamed Conv>")
    x = graph.tensors[node.inputs[0]]
    w = graph.tensors[node.inputs[1]]
    if len(x.shape) not in (3, 4):
        return f"{label}: {len(x.shape) - 2}-D convolution (sparsec compiles 1-D and 2-D)"
    if x.dtype != "float32":
        return f"{label}: {x.dtype} input (Conv runs on float32; int8 via --quantize dynamic)"
    group = int(node.attrs.get("group", 1))
    depthwise = group == x.shape[1] == w.shape[0] and group > 1
    if not w.is_constant and group > 1 and not depthwise:
        return (f"{label}: a grouped Conv's weight must be a constant (initializer); "
                "sparsec builds its block-diagonal matrix at compile time")
    if group < 1 or x.shape[1] % group or w.shape[0] % group or \
            w.shape[1] * group != x.shape[1]:
        return f"{label}: group={group} does not divide its {x.shape[1]} input channels"
    return ""


def _sole_reader(graph: Graph, name: str, readers) -> Node | None:
    users = readers.get(name, [])
    if len(users) == 1 and name not in graph.outputs:
        return users[0]
    return None


def _fold_batch_norm(graph: Graph, conv: Conv, readers) -> Node:
    """Fold a BatchNormalization that only the Conv feeds into its weight and bias; returns
    the last node folded (the BatchNormalization, or the Conv itself)."""
    bn = _sole_reader(graph, conv.node.outputs[0], readers)
    if bn is None or bn.op != "BatchNormalization" or bn.inputs[0] != conv.node.outputs[0]:
        return conv.node
    if int(bn.attrs.get("training_mode", 0)) or len([o for o in bn.outputs if o]) != 1:
        return conv.node
    params = [graph.tensors[name] for name in bn.inputs[1:5]]
    if not all(t.is_constant for t in params) or conv.weight is None or conv.bias is None:
        return conv.node
    scale, shift, mean, var = (t.data.astype(np.float64).reshape(-1) for t in params)
    factor = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    conv.weight = (conv.weight * factor[:, None, None, None]).astype(np.float32)
    conv.bias = ((conv.bias - mean) * factor + shift).astype(np.float32)
    conv.has_bias = True
    return bn


def _depthwise_activation(graph: Graph, node: Node) -> bool:
    return node.op == "Relu" or (node.op == "Clip" and clip_bounds(graph, node) is not None)


def _activation_params(graph: Graph, node: Node | None) -> tuple[str, tuple]:
    if node is None:
        return "", ()
    return node.op, (clip_bounds(graph, node) if node.op == "Clip" else ())


class _Names:
    """Fresh tensor names derived from the conv's output: model names are only keys here."""

    def __init__(self, graph: Graph, base: str):
        self.graph, self.base = graph, base

    def add(self, suffix: str, shape: tuple[int, ...], data: np.ndarray | None = None,
            dtype: str = "float32") -> str:
        name, number = f"{self.base}::{suffix}", 0
        while name in self.graph.tensors:
            number += 1
            name = f"{self.base}::{suffix}{number}"
        self.graph.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype, data)
        return name


def _depthwise(graph: Graph, conv: Conv, activation: Node | None, output: str) -> list[Node]:
    names = _Names(graph, output)
    weight = (names.add("depthwise_weight", conv.weight.shape, conv.weight)
              if conv.weight is not None else conv.node.inputs[1])
    bias = ("" if not conv.has_bias else conv.bias_input if conv.bias is None
            else names.add("bias", (conv.m,), conv.bias))
    kind, params = _activation_params(graph, activation)
    x = conv.node.inputs[0]
    if conv.one_d:  # a height of 1: the same bytes as [N, C, 1, W]
        x4 = names.add("x4", (conv.n, conv.c, 1, conv.w))
        y4 = names.add("y4", (conv.n, conv.m, 1, conv.wo))
        return [_reshape(graph, x, x4, names),
                Node(DEPTHWISE_CONV, [x4, weight, bias], [y4],
                     dict(conv.geometry(), activation=kind, activation_params=params),
                     conv.node.name),
                _reshape(graph, y4, output, names)]
    return [Node(DEPTHWISE_CONV, [x, weight, bias], [output],
                 dict(conv.geometry(), activation=kind, activation_params=params),
                 conv.node.name)]


def _as_dense(graph: Graph, conv: Conv, activation: Node | None, output: str) -> list[Node]:
    names = _Names(graph, output)
    n, k, pixels = conv.n, conv.c * conv.kh * conv.kw, conv.ho * conv.wo
    lead = () if n == 1 else (n,)
    nodes = []
    x = conv.node.inputs[0]
    if conv.pointwise:
        patches = names.add("channels", lead + (k, pixels))
        nodes.append(_reshape(graph, x, patches, names))
    else:
        patches = names.add("patches", lead + (k, pixels))
        source = x
        if conv.one_d:
            source = names.add("x4", (n, conv.c, 1, conv.w))
            nodes.append(_reshape(graph, x, source, names))
        nodes.append(Node(IM2COL, [source], [patches], conv.geometry(), conv.node.name))
    flip = [1, 0] if n == 1 else [0, 2, 1]
    rows = names.add("rows", lead + (pixels, k))
    nodes.append(Node("Transpose", [patches], [rows], {"perm": flip}, conv.node.name))
    if conv.weight is not None:
        weight = names.add("weight", (k, conv.m), conv.matrix())
    else:  # a run-time weight [M, C, kh, kw]: taps first, as M x K, flipped to K x M each run
        source = conv.node.inputs[1]
        if conv.one_d:
            source = names.add("weight4", (conv.m, conv.c, 1, conv.kw))
            nodes.append(_reshape(graph, conv.node.inputs[1], source, names))
        taps_first = names.add("weight_taps", (conv.m, conv.kh, conv.kw, conv.c))
        flat = names.add("weight_rows", (conv.m, k))
        weight = names.add("weight", (k, conv.m))
        nodes += [Node("Transpose", [source], [taps_first], {"perm": [0, 2, 3, 1]},
                       conv.node.name),
                  _reshape(graph, taps_first, flat, names),
                  Node("Transpose", [flat], [weight], {"perm": [1, 0]}, conv.node.name)]
    product = names.add("product", lead + (pixels, conv.m))
    nodes.append(Node("MatMul", [rows, weight], [product], {}, conv.node.name))
    result = product
    if conv.has_bias:
        bias = (conv.bias_input if conv.bias is None
                else names.add("bias", (conv.m,), conv.bias))
        result = names.add("biased", lead + (pixels, conv.m))
        nodes.append(Node("Add", [product, bias], [result], {}, conv.node.name))
    if activation is not None:
        activated = names.add("activated", lead + (pixels, conv.m))
        nodes.append(Node(activation.op, [result, *activation.inputs[1:]], [activated],
                          dict(activation.attrs), activation.name))
        result = activated
    channels = names.add("out_channels", lead + (conv.m, pixels))
    nodes.append(Node("Transpose", [result], [channels], {"perm": flip}, conv.node.name))
    nodes.append(_reshape(graph, channels, output, names))
    return nodes


def _reshape(graph: Graph, source: str, target: str, names: _Names) -> Node:
    shape = graph.tensors[target].shape
    spec = names.add("shape", (len(shape),), np.asarray(shape, dtype=np.int64), "int64")
    return Node("Reshape", [source, spec], [target], {}, "")
