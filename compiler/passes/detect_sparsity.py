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

from sparsec.compiler.ir import (
    BITMASK,
    SPARSE_PATTERNS,
    Graph,
    PackedBlocks,
    SparsityInfo,
    Tensor,
    block_shape,
)
from sparsec.errors import SparsecError

NAME = "detect-sparsity"


def float_force(ctx) -> str | None:
    """The pattern forced on float32 weights. One only the lowered kernels offer (x86-amx's
    4x16 and BITMASK) is forced when quantize runs; the float weight it replaces is analysed
    as usual meanwhile."""
    force = ctx.options.force_pattern
    if ctx.options.quantize and force not in (None, "dense", *ctx.cost.per_block,
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


def block_counts(weight: np.ndarray, rows: int, cols: int) -> int:
    """Number of R x C blocks (zero padded at the K and N tails) holding any nonzero."""
    k, n = weight.shape
    kb, nb = -(-k // rows), -(-n // cols)
    padded = np.zeros((kb * rows, nb * cols), dtype=bool)
    padded[:k, :n] = weight != 0
    return int(padded.reshape(kb, rows, nb, cols).any(axis=(1, 3)).sum())


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


def predicted_costs(weight: np.ndarray, stats: dict[str, tuple[int, float]], cost) -> dict:
    """Predicted time per activation row of the dense kernel and of each offered form: its
    compute, or for a form the cost model streams, the larger of that and its share of
    reading the stored weights (values, and for BITMASK one bit per element) once per pass."""
    elements = weight.size
    compute = {"dense": elements * cost.dense_per_element}
    stored = {"dense": elements * cost.value_bytes}
    for pattern, (count, _fill) in stats.items():
        if pattern in cost.per_block:
            rows, cols = block_shape(pattern)
            compute[pattern] = count * cost.per_block[pattern]
            stored[pattern] = count * rows * cols * cost.value_bytes
        elif pattern in cost.per_element:
            compute[pattern] = elements * cost.per_element[pattern]
            stored[pattern] = count * cost.value_bytes + elements / 8
    costs = {}
    for pattern, ns in compute.items():
        streamed = cost.streamed.get(pattern)
        if streamed is not None:
            ns = max(ns, streamed.stream.ns_per_walk(stored[pattern]) / streamed.rows_per_pass)
        costs[pattern] = ns
    return costs


def analyse(weight: np.ndarray, cost, force: str | None = None) -> SparsityInfo:
    """Statistics for every candidate block shape (and BITMASK where the cost model offers
    it), and the choice: the cheapest by `cost`, or `force` ("dense" or a pattern) when the
    user pinned one (benchmarks, kernel tests)."""
    nonzeros = int(np.count_nonzero(weight))
    density = nonzeros / weight.size if weight.size else 1.0
    stats = {}
    for pattern in dict.fromkeys(SPARSE_PATTERNS + tuple(cost.per_block)):
        rows, cols = block_shape(pattern)
        blocks = block_counts(weight, rows, cols)
        stats[pattern] = (blocks, nonzeros / (blocks * rows * cols) if blocks else 1.0)
    if BITMASK in cost.per_element:
        stats[BITMASK] = (nonzeros, density)
    costs = predicted_costs(weight, stats, cost)
    relative = {p: c / costs["dense"] if costs["dense"] else 1.0 for p, c in costs.items()}
    if force is not None:
        if force not in costs:
            raise SparsecError(f"pattern {force!r} was requested but the target has no kernel "
                               f"for it; it offers: {', '.join(sorted(costs))}")
        choice = force
        reason = f"{force}: requested (predicted {relative[force]:.2f}x the dense kernel's work)"
    else:
        choice = min(costs, key=lambda p: (costs[p], p != "dense"))
        reason = _reason(choice, stats, relative, density) + _streaming(weight, cost)
    if choice in ("dense", BITMASK):
        return SparsityInfo(density, stats, choice, reason)
    rows, cols = block_shape(choice)
    return SparsityInfo(density, stats, choice, reason, pack_blocks(weight, rows, cols))


def _reason(choice: str, stats: dict, relative: dict, density: float) -> str:
    if choice == BITMASK:
        return (f"{BITMASK}: {1 - density:.0%} zeros, dense tiles expanded from a bit mask and "
                f"{stats[BITMASK][0]} nonzeros, predicted {relative[choice]:.2f}x the dense "
                f"kernel's time")
    if choice != "dense":
        blocks, fill = stats[choice]
        return (f"{choice}: {blocks} nonzero blocks, fill {fill:.0%}, predicted "
                f"{relative[choice]:.2f}x the dense kernel's work")
    offered = [p for p in relative if p != "dense"]
    if not offered:
        return "the target offers no sparse kernel"
    runner_up = min(offered, key=relative.get)
    return (f"dense is cheapest; best sparse {runner_up} would cost "
            f"{relative[runner_up]:.2f}x dense (density {density:.2f})")


def _streaming(weight: np.ndarray, cost) -> str:
    """Where a streamed cost model expects the dense weights to come from: what decides
    between dense tiles and BITMASK."""
    if "dense" not in cost.streamed:
        return ""
    streamed = cost.streamed["dense"]
    size = weight.size * cost.value_bytes
    cache = f"the {streamed.stream.cache_bytes >> 10} KiB cache"
    if size <= streamed.stream.cache_bytes:
        return f"; the dense weights' {size / 1024:.0f} KiB stay in {cache}"
    return (f"; the dense weights' {size / 1024:.0f} KiB stream from beyond {cache} every "
            f"{streamed.rows_per_pass} rows")
