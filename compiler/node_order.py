"""Nodes in an order that computes every input before its reader.

ONNX asks for a topologically sorted graph, and onnx.checker refuses any other, but
onnxruntime sorts what it loads, so files out of order circulate and run there: onnxruntime's
own float16 converter (`convert_float_to_float16(..., keep_io_types=True)`) appends the Cast
of each graph input after the nodes that read it. The import sorts such a graph first, keeping
the file's order wherever it is already valid; a graph that no order fixes (a cycle, an input
nothing produces) is left as it is, for the checker to name what is wrong.
"""

from __future__ import annotations

import heapq

import onnx


def sorted_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when its nodes are in order; otherwise a copy with them sorted (stably:
    of the nodes ready to run, the one earliest in the file goes first)."""
    graph = model.graph
    available = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    available.add("")  # an omitted optional input
    if _in_order(graph.node, set(available)):
        return model
    order = _stable_order(graph.node, available)
    if order is None:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = [model.graph.node[i] for i in order]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _in_order(nodes, available: set[str]) -> bool:
    for node in nodes:
        if not all(name in available for name in node.input):
            return False
        available.update(node.output)
    return True


def _stable_order(nodes, available: set[str]) -> list[int] | None:
    """Kahn's algorithm over the node indices, the lowest ready index first; None where some
    node never becomes ready."""
    waiting: dict[int, int] = {}  # node -> inputs not yet available
    readers: dict[str, list[int]] = {}
    ready: list[int] = []
    for index, node in enumerate(nodes):
        missing = {name for name in node.input if name not in available}
        waiting[index] = len(missing)
        for name in missing:
            readers.setdefault(name, []).append(index)
        if not missing:
            ready.append(index)
    heapq.heapify(ready)
    order = []
    produced = set(available)
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for name in nodes[index].output:
            if name in produced:
                continue
            produced.add(name)
            for reader in readers.get(name, ()):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    heapq.heappush(ready, reader)
    return order if len(order) == len(nodes) else None
