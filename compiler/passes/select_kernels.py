"""Choose every node's kernel once and record it on the node.

Requires: the graph's ops, dtypes, weight patterns and precisions are final (quantize has run).
Establishes: every node's `kernel` is the key of the kernel table row that runs it on the
target, and `dispatch` lists the rows the library also carries for it, each called where the CPU
has its feature. Later passes (layouts, scratch in the memory plan) and code generation read
these keys and never choose again, so what `--dump-ir` shows is what runs. Every node without a
kernel is reported at once.
"""

from __future__ import annotations

from sparsec.compiler.ir import Graph
from sparsec.errors import KernelNotFoundError

NAME = "select-kernels"


def run(graph: Graph, ctx) -> Graph:
    if ctx.select_kernel is None:
        return graph
    graph = graph.copy()
    problems = []
    for node in graph.nodes:
        try:
            choice = ctx.select_kernel(graph, node)
        except KernelNotFoundError as exc:
            problems.append(str(exc))
            continue
        node.kernel, node.dispatch = choice.kernel, choice.dispatch
    if problems:
        raise KernelNotFoundError(f"{len(problems)} node(s) cannot be compiled for target "
                                  f"{ctx.target}: " + "; ".join(problems))
    return graph
