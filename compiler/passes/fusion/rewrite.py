"""Applying rewrite rules to a graph until none fires, in time linear in the graph's size.

A rule looks at one node and the nodes next to it (through `Uses`: who produces and who reads
each tensor) and may replace it, absorbing some of its neighbours. Rewrites are applied in
sweeps over the nodes in order; a node that a rewrite made is looked at again at once (a Dense
absorbs its bias, then its activation), and the sweeps repeat until one changes nothing.
`Uses` is kept up to date as nodes come and go, so no rewrite rescans the graph: restarting
from the first node after each rewrite, as this module once did, made fusing an exporter's
20,000-node decomposition quadratic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from sparsec.compiler.ir import Graph, Node


@dataclass(frozen=True)
class Rule:
    """A named rewrite: returns the nodes that replace `node` (and the consumer it swallowed)
    or None when it does not apply."""

    name: str
    apply: Callable[[Graph, Node, Uses], Rewrite | None]


@dataclass(frozen=True)
class Rewrite:
    replacement: Node
    removed: tuple[int, ...]  # ids of nodes absorbed into the replacement
    before: tuple[Node, ...] = ()  # new nodes the replacement reads, placed just before it


class Uses:
    """Who produces and who reads each tensor, and whether the graph returns it."""

    def __init__(self, graph: Graph):
        self.readers = graph.consumers()
        self.producers = graph.producers()
        self.outputs = set(graph.outputs)

    def sole_reader(self, tensor: str) -> Node | None:
        readers = self.readers.get(tensor, [])
        if len(readers) == 1 and tensor not in self.outputs:
            return readers[0]
        return None

    def add(self, node: Node) -> None:
        for name in node.inputs:
            if name:
                self.readers.setdefault(name, []).append(node)
        for name in node.outputs:
            if name:
                self.producers[name] = node

    def remove(self, node: Node) -> None:
        for name in node.inputs:
            if name:
                readers = self.readers[name]
                # by identity: two nodes may have equal fields
                del readers[next(i for i, r in enumerate(readers) if r is node)]
        for name in node.outputs:
            if name and self.producers.get(name) is node:
                del self.producers[name]


def apply_rules(graph: Graph, rules: list[Rule]) -> Graph:
    """Apply rules until none fires; each firing replaces one node and drops what it absorbed.
    At each node the first rule in `rules` that applies fires."""
    uses = Uses(graph)
    live = {id(node): node for node in graph.nodes}
    nodes, changed = list(graph.nodes), True
    while changed:
        changed, kept = False, []
        for node in nodes:
            pending = [node]
            while pending:
                current = pending.pop()
                if id(current) not in live:
                    continue  # absorbed by a rewrite made earlier in this sweep
                rewrite = _first_rewrite(rules, graph, current, uses)
                if rewrite is None:
                    kept.append(current)
                    continue
                changed = True
                for gone in (current, *(live[i] for i in rewrite.removed if i in live)):
                    uses.remove(gone)
                    del live[id(gone)]
                made = [*rewrite.before, rewrite.replacement]
                for new in made:
                    uses.add(new)
                    live[id(new)] = new
                pending.extend(reversed(made))  # looked at next, in graph order
        nodes = [node for node in kept if id(node) in live]
    graph.nodes = nodes
    remove_dead_nodes(graph)
    graph.nodes = in_dependency_order(graph.nodes)
    graph.remove_unused()
    return graph


def _first_rewrite(rules: list[Rule], graph: Graph, node: Node, uses: Uses) -> Rewrite | None:
    for rule in rules:
        rewrite = rule.apply(graph, node, uses)
        if rewrite is not None:
            return rewrite
    return None


def in_dependency_order(nodes: list[Node]) -> list[Node]:
    """The nodes reordered as little as possible so that each follows what it reads. A
    replacement takes the place of the node it was matched at, and can read a value made
    further down: the padding mask torch's TorchScript exporter writes between the scores'
    MatMul and their Add."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.outputs if out}
    waiting = [sum(1 for name in set(node.inputs) if name in producer) for node in nodes]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.inputs):
            if name in producer:
                readers.setdefault(producer[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for reader in readers.get(i, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    return order


def remove_dead_nodes(graph: Graph) -> None:
    """Drop nodes none of whose outputs is read or returned (what a rewrite left behind, such
    as a DynamicQuantizeLinear whose MatMulIntegers all became Dense), and then what only they
    read; every op is pure."""
    reads: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                reads[name] = reads.get(name, 0) + 1
    returned = set(graph.outputs)
    producers = {out: node for node in graph.nodes for out in node.outputs if out}

    def dead(node: Node) -> bool:
        return not any(out and (reads.get(out) or out in returned) for out in node.outputs)

    doomed = [node for node in graph.nodes if dead(node)]
    removed: set[int] = set()
    while doomed:
        node = doomed.pop()
        if id(node) in removed:
            continue
        removed.add(id(node))
        for name in node.inputs:
            if not name:
                continue
            reads[name] -= 1
            producer = producers.get(name)
            if producer is not None and id(producer) not in removed and dead(producer):
                doomed.append(producer)
    if removed:
        graph.nodes = [node for node in graph.nodes if id(node) not in removed]
