"""Lower-precision matrix products: dynamic int8 (`--quantize dynamic`, `--dtype int8`) and
bf16 (`--dtype bf16`, see _mark_bf16).

Requires: fuse (Dense nodes with their epilogues) and detect_sparsity (K x N weights).
Establishes: every Dense node reading int8 codes (fuse maps onnxruntime's dynamically quantized
exports onto them) has a SparsityInfo chosen by the int8 kernels' costs; and when
`ctx.options.quantize == "dynamic"`: every Dense node with a constant float32 weight
(but those kept float32, below) reads instead an int8 weight (symmetric, per output
channel: `scale[n] = max|W[:, n]| / 127`, `q = round-half-even(W / scale)`, so codes lie in
[-127, 127]) and, as input 3, the float32
`scale[N]`. Its activations are quantized when the kernel runs, per tensor, asymmetric uint8,
exactly as ONNX's DynamicQuantizeLinear does it, so the result equals onnxruntime running
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale_x * scale_w) -> bias.
The int8 weight gets its own `SparsityInfo`, chosen by the int8 kernels' costs: rounding can
turn small weights into zeros, and the VNNI kernels work on 4x1 groups of weights.

A layer whose int8 (or bf16) kernel the cost model predicts slower than its float32 one keeps
float32, and its SparsityInfo's reason says so (`--report`): the int8 and bf16 kernels walk
4x1 groups and 2x1 pairs along K, which weights pruned in 1x16 blocks or unstructured fill a
quarter to a half, while the float32 kernels have rows for those patterns; there the lower
precision would cost both accuracy and time (MiniLM 1x16-90 % on x86-avx2: Dense layers 11.6
ms in int8, 10.8 in bf16, 5.0 in float32). `mixed_precision=False` (`--no-mixed-precision`),
or a `force_pattern`, lowers every layer, as tests and benchmarks that pin what runs need.

Codes stop at +-127 rather than -128 so the weights are symmetric; VNNI's u8 x s8 products
(at most 255 * 127 * 4 per lane and step) cannot overflow int32 below K = 16,000.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sparsec.compiler.ir import Graph, Node, SparsityInfo, Tensor
from sparsec.compiler.ops import weight_view
from sparsec.compiler.passes.absorb_patches import dense_rows
from sparsec.compiler.passes.detect_sparsity import analyse, predicted_costs
from sparsec.errors import SparsecError

NAME = "quantize"
MODES = ("dynamic", "bf16")
MAX_DEPTH = 16_000  # K beyond which a u8 x s8 int32 accumulator could overflow
TRANSPOSE_NS_PER_ELEMENT = 1.0  # see _int8_layout_ns


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
    done: dict[str, tuple[str, str] | None] = {}  # float weight -> codes and scales, or None
    producers = graph.producers()
    for node, weight in _float_weights(graph):
        if not np.all(np.isfinite(weight.data)):
            raise SparsecError(f"node {node.name!r}: weight {weight.name!r} holds inf or NaN, "
                               "which int8 cannot represent; compile it without --quantize")
        if weight.shape[0] > MAX_DEPTH:
            raise SparsecError(f"node {node.name!r}: K = {weight.shape[0]} exceeds {MAX_DEPTH}, "
                               "where int32 accumulation of u8 x s8 products could overflow; "
                               "compile it without --quantize")
        if weight.name not in done:
            codes, scales = quantize_weight(weight.data)
            info = analyse(codes, ctx.int8_cost, ctx.options.force_pattern)
            kept = _keeps_float32(weight, codes, info, ctx.int8_cost, "int8", ctx,
                                  _int8_layout_ns(graph, node, producers, ctx.int8_cost))
            done[weight.name] = None if kept else _add_quantized(graph, weight, codes, scales, info)
        if done[weight.name] is None:
            ctx.log.append(f"{NAME}: {node.name or node.outputs[0]}: {weight.sparsity.reason}")
            continue
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
        weight = weight_view(graph, node)
        if weight is not None and weight.dtype == "float32":
            yield node, weight


def _mark_bf16(graph: Graph, ctx) -> Graph:
    """--dtype bf16: every Dense node with a constant float32 weight (but those kept float32,
    see the module's docstring) multiplies in bf16 (attr
    precision; the kernel rounds the weight when it is packed and the activations when it
    runs, and sums in fp32). The weight's pattern is chosen again by the bf16 kernels' costs,
    which walk 2x1 pairs."""
    chosen: dict[str, bool] = {}  # weight -> multiplied in bf16 (a shared weight is analysed once)
    for node, weight in _float_weights(graph):
        if weight.name not in chosen:
            info = analyse(weight.data, ctx.bf16_cost, ctx.options.force_pattern)
            chosen[weight.name] = not _keeps_float32(weight, weight.data, info, ctx.bf16_cost,
                                                     "bf16", ctx)
            if chosen[weight.name]:
                weight.sparsity = info
        if chosen[weight.name]:
            node.attrs["precision"] = "bf16"
            ctx.log.append(f"{NAME}: {node.name or node.outputs[0]}: bf16, "
                           f"{weight.sparsity.reason}")
        else:
            ctx.log.append(f"{NAME}: {node.name or node.outputs[0]}: {weight.sparsity.reason}")
    return graph


def _int8_layout_ns(graph: Graph, node: Node, producers: dict[str, Node],
                    cost) -> tuple[float, float]:
    """What the int8 kernels cost a layer beyond their products, per activation row: (the
    factor of rows they compute, whole token tiles, over the layer's rows; ns per row of
    transposes). A conv's Dense reads channels-first data through a flip that moves no byte,
    and its float32 kernels write channels-first too; the int8 rows read and write row-major
    activations, so their input is transposed to rows (K a row) and their output back (N a
    row). MobileNet-v1 on x86-avx2 (Zen 3), per layer: those transposes took 0.65-1.4 ns per
    element, and the int8 stem (K = 27) 4.1 ms against 0.5 in float32; its classifier, one
    row in a 32-token tile, 0.93 ms against 0.30. (Letting the int8 token rows write
    channels-first made them read it too, through their scalar packing loop: MobileNet-v1's
    int8 layers went from 14.8 to 23.2 ms.)"""
    rows = dense_rows(graph, node)
    if rows <= 0:
        return 1.0, 0.0
    tiles = -(-rows // max(1, cost.tile_rows)) * max(1, cost.tile_rows)
    transposes = 0.0
    flip = producers.get(node.inputs[0])
    if (flip is not None and flip.op == "Transpose" and flip.name == node.name
            and len(graph.tensors[flip.inputs[0]].shape) == 2):
        k, n = graph.tensors[node.inputs[1]].shape
        moved = (0 if cost.reads_feature_major else k) + (0 if cost.writes_feature_major else n)
        transposes = moved * TRANSPOSE_NS_PER_ELEMENT
    return tiles / rows, transposes


def _keeps_float32(weight: Tensor, lowered: np.ndarray, info: SparsityInfo, cost,
                   precision: str, ctx, layout: tuple[float, float] = (1.0, 0.0)) -> bool:
    """Whether the layer stays float32 because its kernel in `precision` (weights `lowered`,
    stored as `info` says) is predicted slower than the float32 one detect_sparsity chose; if
    so, the float32 weight's reason says why. `layout`: _int8_layout_ns's (row factor, ns per
    row) on the lowered kernel's side."""
    if (not ctx.options.mixed_precision or ctx.options.force_pattern is not None
            or weight.sparsity is None):
        return False
    current = weight.sparsity
    float32_ns = predicted_costs(weight.data, current.block_stats, ctx.cost)[current.pattern]
    row_factor, transposes_ns = layout
    lowered_ns = (predicted_costs(lowered, info.block_stats, cost)[info.pattern] * row_factor
                  + transposes_ns)
    if lowered_ns <= float32_ns:
        return False
    weight.sparsity = dataclasses.replace(current, reason=(
        f"{current.reason}; kept float32: {precision} {info.pattern} is predicted "
        f"{lowered_ns / float32_ns:.2f}x its time"))
    return True


def _analyse_exported_int8(graph: Graph, ctx) -> Graph:
    """Dense nodes that fuse made from a quantized export already read int8 codes: they get
    their SparsityInfo from the int8 kernels' costs here, as weights quantized here do."""
    pending = [node for node in graph.nodes
               if (codes := weight_view(graph, node)) is not None
               and codes.dtype == "int8" and codes.sparsity is None]
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


def _add_quantized(graph: Graph, weight: Tensor, codes: np.ndarray, scales: np.ndarray,
                   info: SparsityInfo) -> tuple[str, str]:
    names = []
    for suffix, data in (("int8", codes), ("scale", scales)):
        name = f"{weight.name}::{suffix}"
        while name in graph.tensors:
            name += "'"
        graph.tensors[name] = Tensor(name, tuple(data.shape), str(data.dtype), data)
        names.append(name)
    graph.tensors[names[0]].sparsity = info
    return names[0], names[1]
