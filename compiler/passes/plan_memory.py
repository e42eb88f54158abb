"""Place every intermediate tensor at a fixed offset in one arena.

Requires: the final node order (run last).
Establishes: `graph.memory` maps each intermediate (produced by a node, neither a graph input nor
a graph output, not a constant) to a 64-byte-aligned offset, and each node whose kernel needs
scratch (`ctx.scratch_bytes`) to a scratch region live only while that node runs; regions whose
lifetimes overlap never share bytes; `arena_bytes` is the whole arena. Graph inputs and
outputs live in the caller's buffers, constants in the library's read-only data, so a run
allocates nothing.
"""

from __future__ import annotations

from sparsec.compiler import limits
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
    ranges = {("tensor", name): span for name, span in live_ranges(graph).items()}
    sizes = {key: graph.tensors[key[1]].nbytes for key in ranges}
    if getattr(ctx, "scratch_bytes", None) is not None:
        for index, node in enumerate(graph.nodes):
            size = ctx.scratch_bytes(graph, node)
            if size:
                ranges[("scratch", index)] = (index, index)
                sizes[("scratch", index)] = size
    offsets = first_fit(ranges, sizes)
    arena = max((offsets[key] + _align(max(sizes[key], 1)) for key in offsets), default=0)
    # The library allocates the arena when a run context is created: refuse it here instead.
    weights = sum(t.nbytes for t in graph.tensors.values() if t.is_constant)
    limits.check_total(weights, arena, getattr(ctx, "max_memory", limits.DEFAULT_MAX_MEMORY))
    graph.memory = MemoryPlan(
        {name: off for (kind, name), off in offsets.items() if kind == "tensor"}, arena,
        ALIGNMENT, {index: (off, sizes[("scratch", index)])
                    for (kind, index), off in offsets.items() if kind == "scratch"})
    return graph


def first_fit(ranges: dict, sizes: dict) -> dict:
    """Offsets for regions with (first, last) node lifetimes: largest first, each at the
    lowest aligned offset clear of every placed region whose lifetime overlaps its own."""
    order = sorted(ranges, key=lambda key: (-sizes[key], ranges[key][0], str(key)))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets = {}
    for key in order:
        first, last = ranges[key]
        size = _align(max(sizes[key], 1))
        conflicts = sorted((off, end) for off, end, f, l in placed if f <= last and first <= l)
        offset = 0
        for off, end in conflicts:
            if offset + size <= off:
                break
            offset = max(offset, end)
        offsets[key] = offset
        placed.append((offset, offset + size, first, last))
    return offsets
