"""IR invariants checked after every pass in tests (and on request from the CLI)."""

from __future__ import annotations

from sparsec.compiler.ir import Graph, is_layout_flip
from sparsec.compiler.ops import COPY_OPS
from sparsec.errors import VerificationError


def verify(graph: Graph, after: str = "import") -> None:
    """Raise `VerificationError` naming the pass `after` which the graph broke an invariant."""
    problems = []
    defined = set(graph.inputs) | {n for n, t in graph.tensors.items() if t.is_constant}
    for name in graph.inputs:
        if name not in graph.tensors:
            problems.append(f"input {name!r} has no tensor record")
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and name not in defined:
                problems.append(f"node %{index} ({node.op}) reads {name!r} before it is defined")
        for name in node.outputs:
            if not name:
                continue
            if name in defined:
                problems.append(f"node %{index} ({node.op}) redefines {name!r}")
            if name not in graph.tensors:
                problems.append(f"node %{index} ({node.op}) output {name!r} has no tensor record")
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            problems.append(f"graph output {name!r} is never defined")
    for name, tensor in graph.tensors.items():
        if any(d < 0 for d in tensor.shape):
            problems.append(f"tensor {name!r} has a negative dimension {tensor.shape}")
        if tensor.is_constant and tuple(tensor.data.shape) != tuple(tensor.shape):
            problems.append(f"constant {name!r} holds data of shape {tensor.data.shape}, "
                            f"declared {tensor.shape}")
    if graph.memory is not None:
        problems += _memory_problems(graph)
    if problems:
        raise VerificationError(f"IR invalid after {after}: " + "; ".join(problems[:20]))


def _lifetimes(graph: Graph) -> dict[str, tuple[int, int]]:
    """First and last node touching each tensor, computed here independently of plan_memory,
    so a liveness bug there cannot hide from this check."""
    spans: dict[str, tuple[int, int]] = {}
    for index, node in enumerate(graph.nodes):
        for name in [*node.inputs, *node.outputs]:
            if name:
                first = spans.get(name, (index, index))[0]
                spans[name] = (first, index)
    return spans


def _memory_problems(graph: Graph) -> list[str]:
    """Two regions (tensors, kernel scratch) may share arena bytes only if their lifetimes do
    not overlap."""
    ranges = _lifetimes(graph)
    plan = graph.memory
    # A byte copy's output placed at its input's offset is the same bytes under another name
    # (plan_memory's views): one region, live from the first to the last use of either.
    owner = {name: name for name in plan.offsets}
    for node in graph.nodes:
        if ((node.op in COPY_OPS or is_layout_flip(graph, node)) and node.inputs and node.outputs
                and node.inputs[0] in owner and node.outputs[0] in owner
                and plan.offsets[node.inputs[0]] == plan.offsets[node.outputs[0]]):
            owner[node.outputs[0]] = owner[node.inputs[0]]
    merged: dict[str, tuple[int, int, int, int]] = {}
    for name, offset in plan.offsets.items():
        size, (first, last) = graph.tensors[name].nbytes, ranges[name]
        if owner[name] in merged:
            _, known, start, end = merged[owner[name]]
            size, first, last = max(size, known), min(first, start), max(last, end)
        merged[owner[name]] = (offset, size, first, last)
    regions = [(repr(name), *region) for name, region in merged.items()]
    regions += [(f"scratch of node %{index}", offset, size, index, index)
                for index, (offset, size) in plan.scratch.items()]
    regions.sort(key=lambda region: region[1])
    problems = []
    for label, offset, size, _, _ in regions:
        if offset % plan.alignment or offset + size > plan.arena_bytes:
            problems.append(f"{label} placed at {offset} is misaligned or outside the arena")
    for i, (a, a_off, a_size, a0, a1) in enumerate(regions):
        for b, b_off, _, b0, b1 in regions[i + 1:]:
            if b_off >= a_off + a_size:
                break
            if a0 <= b1 and b0 <= a1:
                problems.append(f"{a} and {b} share arena bytes while both are live")
    return problems
