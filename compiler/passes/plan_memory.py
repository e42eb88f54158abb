"""Place every intermediate tensor at a fixed offset in one arena.

Requires: the final node order (run last).
Establishes: `graph.memory` maps each intermediate (produced by a node, neither a graph input nor
a graph output, not a constant) to a 64-byte-aligned offset, and each node whose kernel needs
scratch (`ctx.scratch_bytes`) to a scratch region live only while that node runs; regions whose
lifetimes overlap never share bytes, except that a byte copy's output shares its input's (see
`views`); `arena_bytes` is the whole arena. Graph inputs and outputs live in the caller's
buffers, constants in the library's read-only data, so a run allocates nothing.
"""

from __future__ import annotations

import bisect

from sparsec.compiler import limits
from sparsec.compiler.ir import Graph, MemoryPlan, is_layout_flip
from sparsec.compiler.ops import COPY_OPS

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


def views(graph: Graph, ranges: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Intermediates that a byte copy (Reshape, Flatten, Squeeze, Unsqueeze, Identity, or a
    Transpose that only flips the layout, see choose_layouts) makes from another intermediate,
    mapped to the tensor whose bytes they are: they share its place, and the copy kernel,
    seeing its input and output at one address, does nothing. A copy's tensors must both be
    row-major: a feature-major tensor's bytes are in another order."""
    root: dict[str, str] = {}
    for node in graph.nodes:
        if not node.inputs or not node.outputs:
            continue
        source, view = node.inputs[0], node.outputs[0]
        same_bytes = is_layout_flip(graph, node) or (
            node.op in COPY_OPS
            and graph.tensors[source].layout == graph.tensors[view].layout == "row-major")
        if (same_bytes and source in ranges and view in ranges
                and graph.tensors[source].nbytes == graph.tensors[view].nbytes):
            root[view] = root.get(source, source)
    return root


def _align(value: int) -> int:
    return -(-value // ALIGNMENT) * ALIGNMENT


def run(graph: Graph, ctx) -> Graph:
    graph = graph.copy()
    spans = live_ranges(graph)
    shared = views(graph, spans)
    for view, source in shared.items():  # the bytes live until the last reader of any name
        spans[source] = (spans[source][0], max(spans[source][1], spans.pop(view)[1]))
    ranges = {("tensor", name): span for name, span in spans.items()}
    sizes = {key: graph.tensors[key[1]].nbytes for key in ranges}
    if ctx.scratch_bytes is not None:
        for index, node in enumerate(graph.nodes):
            size = ctx.scratch_bytes(graph, node)
            if size:
                ranges[("scratch", index)] = (index, index)
                sizes[("scratch", index)] = size
    offsets = first_fit(ranges, sizes)
    arena = max((offsets[key] + _align(max(sizes[key], 1)) for key in offsets), default=0)
    # The library allocates the arena when a run context is created: refuse it here instead.
    weights = sum(t.nbytes for t in graph.tensors.values() if t.is_constant)
    limits.check_total(weights, arena, ctx.options.max_memory)
    places = {name: off for (kind, name), off in offsets.items() if kind == "tensor"}
    places.update({view: places[source] for view, source in shared.items()})
    graph.memory = MemoryPlan(
        places, arena,
        ALIGNMENT, {index: (off, sizes[("scratch", index)])
                    for (kind, index), off in offsets.items() if kind == "scratch"})
    return graph


def first_fit(ranges: dict, sizes: dict) -> dict:
    """Offsets for regions with (first, last) node lifetimes: largest first, each at the
    lowest aligned offset clear of every placed region whose lifetime overlaps its own."""
    order = sorted(ranges, key=lambda key: (-sizes[key], ranges[key][0], str(key)))
    placed = _Lifetimes(1 + max((last for _, last in ranges.values()), default=0))
    offsets = {}
    for key in order:
        first, last = ranges[key]
        size = _align(max(sizes[key], 1))
        offset = 0
        for off, end in sorted(placed.overlapping(first, last)):
            if offset + size <= off:
                break
            offset = max(offset, end)
        offsets[key] = offset
        placed.add(first, last, (offset, offset + size))
    return offsets


class _Lifetimes:
    """Placed regions by lifetime, answering "which overlap [first, last]" without a scan of
    them all (a scan per placement made planning quadratic in the node count). A region
    overlaps [first, last] when it is live at `first` (a segment tree over node indices,
    stabbed at `first`) or begins in (first, last] (regions keyed by their first node)."""

    def __init__(self, nodes: int):
        self._leaves = nodes
        self._segments: list[list] = [[] for _ in range(2 * nodes)]
        self._starts: list[int] = []  # sorted, distinct
        self._by_start: dict[int, list] = {}

    def add(self, first: int, last: int, region) -> None:
        low, high = first + self._leaves, last + 1 + self._leaves
        while low < high:  # the tree nodes that together cover [first, last]
            if low & 1:
                self._segments[low].append(region)
                low += 1
            if high & 1:
                high -= 1
                self._segments[high].append(region)
            low, high = low >> 1, high >> 1
        if first not in self._by_start:
            bisect.insort(self._starts, first)
            self._by_start[first] = []
        self._by_start[first].append(region)

    def overlapping(self, first: int, last: int) -> list:
        found = []
        node = first + self._leaves
        while node >= 1:
            found += self._segments[node]
            node >>= 1
        for start in self._starts[bisect.bisect_right(self._starts, first):
                                  bisect.bisect_right(self._starts, last)]:
            found += self._by_start[start]
        return found
