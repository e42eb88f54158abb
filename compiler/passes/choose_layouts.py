"""Give each activation between two matrix kernels the layout those kernels want.

Requires: the final kernels' layout support is known (`ctx.layouts`, from the codegen kernel
table, so this package stays independent of codegen); quantize has run.
Establishes: an intermediate tensor is FEATURE_MAJOR (stored transposed, K x rows: tokens
contiguous) exactly when its producer is a Dense node whose kernel can write that layout and
every reader is a Dense node reading it as its activations (input 0, no transA) whose kernel
can read it. Everything else, graph inputs and outputs included, stays row-major, so no
transpose node is ever inserted: the token-tile kernels compute Y^T = W^T . A^T, and a chain of
them now hands Y^T straight to the next one instead of transposing it back and forth.
"""

from __future__ import annotations

from sparsec.compiler.ir import FEATURE_MAJOR, Graph
from sparsec.compiler.ops import DENSE

NAME = "choose-layouts"


def run(graph: Graph, ctx) -> Graph:
    if ctx.layouts is None:
        return graph
    graph = graph.copy()
    readers = graph.consumers()
    outside = set(graph.inputs) | set(graph.outputs)
    for node in graph.nodes:
        if node.op != DENSE or not ctx.layouts(graph, node).writes_feature_major:
            continue
        name = node.outputs[0]
        tensor = graph.tensors[name]
        users = readers.get(name, [])
        if name in outside or not users or len(tensor.shape) < 2:
            continue
        if all(user.op == DENSE and user.inputs[0] == name and name not in user.inputs[1:]
               and not user.attrs.get("trans_a", 0)
               and ctx.layouts(graph, user).reads_feature_major for user in users):
            tensor.layout = FEATURE_MAJOR
            ctx.log.append(f"{NAME}: {name!r} feature-major between "
                           f"{node.name or '?'} and {', '.join(u.name or '?' for u in users)}")
    return graph
