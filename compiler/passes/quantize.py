"""Lower-precision matrix products: dynamic int8 (`--quantize dynamic`, `--dtype int8`) and
bf16 (`--dtype bf16`, see _mark_bf16).

Requires: fuse (Dense nodes with their epilogues) and detect_sparsity (K x N weights).
Establishes: every Dense node reading int8 codes (fuse maps onnxruntime's dynamically quantized
exports onto them) has a SparsityInfo chosen by the int8 kernels' costs; and when
`ctx.options.quantize == "dynamic"`: every Dense node with a constant float32 weight
reads instead an int8 weight (symmetric, per output channel: `scale[n] = max|W[:, n]| / 127`,
`q = round-half-even(W / scale)`, so codes lie in [-127, 127]) and, as input 3, the float32
`scale[N]`. Its activations are quantized when the kernel runs, per tensor, asymmetric uint8,
exactly as ONNX's DynamicQuantizeLinear does it, so the result equals onnxruntime running
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale_x * scale_w) -> bias.
The int8 weight gets its own `SparsityInfo`, chosen by the int8 kernels' costs: rounding can
turn small weights into zeros, and the VNNI kernels work on 4x1 groups of weights.

Codes stop at +-127 rather than -128 so the weights are symmetric; VNNI's u8 x s8 products
(at most 255 * 127 * 4 per lane and step) cannot overflow int32 below K = 16,000.
"""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Tensor
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes.detect_sparsity import analyse
from sparsec.errors import SparsecError

NAME = "quantize"
MODES = ("dynamic", "bf16")
MAX_DEPTH = 16_000  # K beyond which a u8 x s8 int32 accumulator could overflow


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 codes and float32 scales; an all-zero column gets scale 1.
    The step is max / 127 rounded up to a float32, never down: a subnormal step rounded down
    by up to half its (large) relative spacing would push the largest code past 127 and clip it."""
    absmax = np.max(np.abs(weight), axis=0, initial=0).astype(np.float32)
    exact = absmax.astype(np.float64) / 127
    scale = exact.astype(np.float32)
    low = scale.astype(np.float64) < exact
    scale[low] = np.nextafter(scale[low], np.float32(np.inf))
    scale[absmax == 0] = 1.0
    codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return codes, scale


def run(graph: Graph, ctx) -> Graph:
    graph = _analyse_exported_int8(graph, ctx)
    if ctx.options.quantize is None:
        return graph
    if ctx.options.quantize not in MODES:
        raise SparsecError(f"unknown quantization {ctx.options.quantize!r}; choose one of: "
                           + ", ".join(MODES))
    graph = graph.copy()
    if ctx.options.quantize == "bf16":
        return _mark_bf16(graph, ctx)
    done: dict[str, tuple[str, str]] = {}  # float weight -> its codes and scales (shared weights)
    for node, weight in _float_weights(graph):
        if not np.all(np.isfinite(weight.data)):
            raise SparsecError(f"node {node.name!r}: weight {weight.name!r} holds inf or NaN, "
                               "which int8 cannot represent; compile it without --quantize")
        if weight.shape[0] > MAX_DEPTH:
            raise SparsecError(f"node {node.name!r}: K = {weight.shape[0]} exceeds {MAX_DEPTH}, "
                               "where int32 accumulation of u8 x s8 products could overflow; "
                               "compile it without --quantize")
        if weight.name not in done:
            done[weight.name] = _add_quantized(graph, weight, ctx)
        codes, scales = done[weight.name]
        node.inputs[1] = codes
        node.inputs[2:] = [node.inputs[2], scales]
        node.attrs["quantize"] = "dynamic"
        ctx.log.append(f"{NAME}: {node.name or node.outputs[0]}: int8 weights, "
                       f"{graph.tensors[codes].sparsity.reason}")
    graph.remove_unused()
    return graph


def _float_weights(graph: Graph):
    """Each Dense node whose weight is a constant K x N float32 tensor, with that tensor."""
    for node in graph.nodes:
        if node.op != DENSE:
            continue
        weight = graph.tensors[node.inputs[1]]
        if weight.is_constant and weight.dtype == "float32" and len(weight.shape) == 2:
            yield node, weight


def _mark_bf16(graph: Graph, ctx) -> Graph:
    """--dtype bf16: every Dense node with a constant float32 weight multiplies in bf16 (attr
    precision; the kernel rounds the weight when it is packed and the activations when it
    runs, and sums in fp32). The weight's pattern is chosen again by the bf16 kernels' costs,
    which walk 2x1 pairs."""
    analysed: set[str] = set()  # a weight shared by several nodes is analysed once
    for node, weight in _float_weights(graph):
        node.attrs["precision"] = "bf16"
        if weight.name not in analysed:
            analysed.add(weight.name)
            weight.sparsity = analyse(weight.data, ctx.bf16_cost, ctx.options.force_pattern)
        ctx.log.append(f"{NAME}: {node.name or node.outputs[0]}: bf16, "
                       f"{weight.sparsity.reason}")
    return graph


def _analyse_exported_int8(graph: Graph, ctx) -> Graph:
    """Dense nodes that fuse made from a quantized export already read int8 codes: they get
    their SparsityInfo from the int8 kernels' costs here, as weights quantized here do."""
    pending = [node for node in graph.nodes if node.op == DENSE
               and graph.tensors[node.inputs[1]].dtype == "int8"
               and graph.tensors[node.inputs[1]].sparsity is None]
    if not pending:
        return graph
    graph = graph.copy()
    for node in pending:
        codes = graph.tensors[node.inputs[1]]
        if codes.sparsity is None:
            if codes.shape[0] > MAX_DEPTH:
                raise SparsecError(f"node {node.name!r}: K = {codes.shape[0]} exceeds "
                                   f"{MAX_DEPTH}, where the int8 kernels' int32 accumulation "
                                   "could overflow")
            codes.sparsity = analyse(codes.data, ctx.int8_cost, ctx.options.force_pattern)
    return graph


def _add_quantized(graph: Graph, weight: Tensor, ctx) -> tuple[str, str]:
    codes, scales = quantize_weight(weight.data)
    names = []
    for suffix, data in (("int8", codes), ("scale", scales)):
        name = f"{weight.name}::{suffix}"
        while name in graph.tensors:
            name += "'"
        graph.tensors[name] = Tensor(name, tuple(data.shape), str(data.dtype), data)
        names.append(name)
    graph.tensors[names[0]].sparsity = analyse(codes, ctx.int8_cost, ctx.options.force_pattern)
    return names[0], names[1]
