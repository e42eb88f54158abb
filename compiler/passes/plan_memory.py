"""Place every intermediate tensor at a fixed offset in one arena.

Requires: the final node order (run last).
Establishes: `graph.memory` maps each intermediate (produced by a node, neither a graph input nor
a graph output, not a constant) to a 64-byte-aligned offset; tensors whose lifetimes overlap never
share bytes; `arena_bytes` is the whole arena. Graph inputs and outputs live in the caller's
buffers, constants in the library's read-only data, so a run allocates nothing.
"""

from __future__ import annotations

from sparsec.compiler.ir import Graph, MemoryPlan

NAME = "plan-memory"
ALIGNMENT = 64  # one cache line, and the widest vector load (AVX-512)


def intermediates(graph: Graph) -> list[str]:
    outside = set(graph.inputs) | set(graph.outputs)
    return [out for node in graph.nodes for out in node.outputs
            if out and out not in outside and not graph.tensors[out].is_constant]


def live_ranges(graph: Graph) -> dict[str, tuple[int, int]]:
    """Node index that defines each intermediate, and the last node index that reads it."""
    ranges = {}
    wanted = set(intermediates(graph))
    for index, node in enumerate(graph.nodes):
        for name in node.outputs:
            if name in wanted:
                ranges[name] = (index, index)
        for name in node.inputs:
            if name in ranges:
                ranges[name] = (ranges[name][0], index)
    return ranges


def _align(value: int) -> int:
    return -(-value // ALIGNMENT) * ALIGNMENT


def run(graph: Graph, ctx) -> Graph:
    graph = graph.copy()
    ranges = live_ranges(graph)
    # Largest first: big tensors claim low offsets, small ones fill the gaps between them.
    order = sorted(ranges, key=lambda n: (-graph.tensors[n].nbytes, ranges[n][0]))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets = {}
    for name in order:
        first, last = ranges[name]
        size = _align(max(graph.tensors[name].nbytes, 1))
        conflicts = sorted((off, end) for off, end, f, l in placed if f <= last and first <= l)
        offset = 0
        for off, end in conflicts:
            if offset + size <= off:
                break
            offset = max(offset, end)
        offsets[name] = offset
        placed.append((offset, offset + size, first, last))
    arena = max((end for _, end, _, _ in placed), default=0)
    graph.memory = MemoryPlan(offsets, arena, ALIGNMENT)
    return graph
