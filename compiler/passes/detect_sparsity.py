"""Measure every matrix weight and choose how its kernel will store it.

Requires: constants folded. Weights are the constant 2-D right-hand operands of MatMul and Gemm.
Establishes: every such weight is stored K x N (Gemm transB folded into the data) and carries a
`SparsityInfo`: density, zero-block statistics for every candidate block shape, the chosen pattern
(one of `SPARSE_PATTERNS`, "dense", or a form the cost model offers such as BITMASK) with the
reason, and for a block pattern the packed blocks. The choice is the cheapest by the target's
cost model (`ctx.cost`); dense wins ties.
"""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import SPARSE_PATTERNS, Graph, PackedBlocks, SparsityInfo, Tensor
from sparsec.compiler.patterns import BITMASK, DENSE_PATTERN, Pattern
from sparsec.errors import SparsecError

NAME = "detect-sparsity"


def float_force(ctx) -> Pattern | None:
    """The pattern forced on float32 weights. One only the lowered kernels offer (x86-amx's
    4x16 and BITMASK) is forced when quantize runs; the float weight it replaces is analysed
    as usual meanwhile."""
    force = ctx.options.force_pattern
    if ctx.options.quantize and force not in (None, DENSE_PATTERN, *ctx.cost.per_block,
                                              *ctx.cost.per_element):
        return None
    return force


def run(graph: Graph, ctx) -> Graph:
    graph = graph.copy()
    users = graph.consumers()
    copies: dict[str, str] = {}  # weight -> its transposed copy, when the original stays too
    force = float_force(ctx)
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        weight = graph.tensors[node.inputs[1]]
        if not weight.is_constant or weight.dtype != "float32" or len(weight.shape) != 2:
            continue
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            shared = len(users[weight.name]) > 1 or weight.name in graph.outputs
            weight = _store_transposed(graph, node, weight, shared, copies)
            node.attrs["transB"] = 0
        if weight.sparsity is None:
            weight.sparsity = analyse(weight.data, ctx.cost, force)
    return graph


def _store_transposed(graph: Graph, node, weight: Tensor, shared: bool,
                      copies: dict[str, str]) -> Tensor:
    name = weight.name
    if shared:  # another node or the graph's outputs still read the N x K original
        if name in copies:  # a Gemm before this one transposed the same weight
            node.inputs[1] = copies[name]
            return graph.tensors[copies[name]]
        name = f"{weight.name}::transposed"
        while name in graph.tensors:
            name += "'"
        copies[weight.name] = node.inputs[1] = name
    data = np.ascontiguousarray(weight.data.T)
    graph.tensors[name] = Tensor(name, tuple(data.shape), weight.dtype, data)
    return graph.tensors[name]


def pack_blocks(weight: np.ndarray, rows: int, cols: int) -> PackedBlocks:
    """Block-CSR over K x N: per block row, the block columns that hold a nonzero."""
    k, n = weight.shape
    kb, nb = -(-k // rows), -(-n // cols)
    padded = np.zeros((kb * rows, nb * cols), dtype=weight.dtype)
    padded[:k, :n] = weight
    tiles = padded.reshape(kb, rows, nb, cols).transpose(0, 2, 1, 3)  # kb, nb, R, C
    nonzero = tiles.any(axis=(2, 3))
    block_rows, block_cols = np.nonzero(nonzero)
    row_ptr = np.zeros(kb + 1, dtype=np.int32)
    np.cumsum(np.bincount(block_rows, minlength=kb), out=row_ptr[1:])
    return PackedBlocks(rows, cols, row_ptr, block_cols.astype(np.int32),
                        np.ascontiguousarray(tiles[block_rows, block_cols]))


def predicted_costs(weight: np.ndarray, stats: dict[Pattern, tuple[int, float]],
                    cost) -> dict[Pattern, float]:
    """Predicted time per activation row of the dense kernel and of each offered form: its
    work units times their cost, or for a form the cost model streams, the larger of that
    and its share of reading the stored weights once per pass."""
    elements = weight.size
    compute = {DENSE_PATTERN: elements * cost.dense_per_element}
    stored = {DENSE_PATTERN: DENSE_PATTERN.streamed_bytes(elements, elements, cost.value_bytes)}
    for pattern, (units, _fill) in stats.items():
        pattern = Pattern(pattern)
        per_unit = (cost.per_block if pattern.is_block else cost.per_element).get(pattern)
        if per_unit is not None:
            compute[pattern] = pattern.work_units(elements, units) * per_unit
            stored[pattern] = pattern.streamed_bytes(elements, units, cost.value_bytes)
    costs = {}
    packing = weight.shape[0] * cost.per_activation  # K activation elements a row
    for pattern, ns in compute.items():
        streamed = cost.streamed.get(pattern)
        if streamed is not None:
            ns = max(ns, streamed.stream.ns_per_walk(stored[pattern]) / streamed.rows_per_pass)
        costs[pattern] = ns + packing
    return costs


def analyse(weight: np.ndarray, cost, force: str | None = None) -> SparsityInfo:
    """Statistics for every candidate block shape (and BITMASK where the cost model offers
    it), and the choice: the cheapest by `cost`, or `force` (dense or a pattern) when the
    user pinned one (benchmarks, kernel tests)."""
    _nonzeros, density = DENSE_PATTERN.count(weight)
    stats = {pattern: pattern.count(weight)
             for pattern in map(Pattern, dict.fromkeys(SPARSE_PATTERNS + tuple(cost.per_block)))}
    if BITMASK in cost.per_element:
        stats[BITMASK] = BITMASK.count(weight)
    costs = predicted_costs(weight, stats, cost)
    dense = costs[DENSE_PATTERN]
    relative = {p: c / dense if dense else 1.0 for p, c in costs.items()}
    if force is not None:
        if force not in costs:
            raise SparsecError(f"pattern {force!r} was requested but the target has no kernel "
                               f"for it; it offers: {', '.join(sorted(costs))}")
        choice = Pattern(force)
        reason = f"{force}: requested (predicted {relative[force]:.2f}x the dense kernel's work)"
    else:
        choice = min(costs, key=lambda p: (costs[p], not p.is_dense))
        reason = _reason(choice, stats, relative, density) + _streaming(weight, cost)
    if not choice.is_block:
        return SparsityInfo(density, stats, choice, reason)
    return SparsityInfo(density, stats, choice, reason, pack_blocks(weight, *choice.block))


def _reason(choice: Pattern, stats: dict, relative: dict, density: float) -> str:
    if choice.is_bitmask:
        return (f"{BITMASK}: {1 - density:.0%} zeros, dense tiles expanded from a bit mask and "
                f"{stats[BITMASK][0]} nonzeros, predicted {relative[choice]:.2f}x the dense "
                f"kernel's time")
    if choice.is_block:
        blocks, fill = stats[choice]
        return (f"{choice}: {blocks} nonzero blocks, fill {fill:.0%}, predicted "
                f"{relative[choice]:.2f}x the dense kernel's work")
    offered = [p for p in relative if not p.is_dense]
    if not offered:
        return "the target offers no sparse kernel"
    runner_up = min(offered, key=relative.get)
    return (f"dense is cheapest; best sparse {runner_up} would cost "
            f"{relative[runner_up]:.2f}x dense (density {density:.2f})")


def _streaming(weight: np.ndarray, cost) -> str:
    """Where a streamed cost model expects the dense weights to come from: what decides
    between dense tiles and BITMASK."""
    if DENSE_PATTERN not in cost.streamed:
        return ""
    streamed = cost.streamed[DENSE_PATTERN]
    size = weight.size * cost.value_bytes
    cache = f"the {streamed.stream.cache_bytes >> 10} KiB cache"
    if size <= streamed.stream.cache_bytes:
        return f"; the dense weights' {size / 1024:.0f} KiB stay in {cache}"
    return (f"; the dense weights' {size / 1024:.0f} KiB stream from beyond {cache} every "
            f"{streamed.rows_per_pass} rows")
