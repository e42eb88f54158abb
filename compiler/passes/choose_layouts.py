"""Give each activation between two matrix kernels the layout those kernels want.

Requires: every node's kernel is chosen (select_kernels) and `ctx.layouts` reports what it can
read and write (from the codegen kernel table, so this package stays independent of codegen).
Establishes: an intermediate tensor is FEATURE_MAJOR (stored transposed, K x rows: tokens
contiguous) exactly when
- its producer is a Dense node whose kernel can write that layout and every reader either is a
  Dense node reading it as its activations (input 0, no transA) whose kernel can read it, or
  is a 2-D Transpose (a layout flip, below) whose output stays row-major; or
- its producer is a 2-D Transpose of a row-major tensor and every reader is such a Dense node.
Everything else, graph inputs and outputs included, stays row-major, so no transpose node is
ever inserted: the token-tile kernels compute Y^T = W^T . A^T, and a chain of them hands Y^T
straight to the next one instead of transposing it back and forth. A 2-D Transpose between a
row-major and a feature-major tensor (`is_layout_flip`) moves no byte: lower_conv's transposes
between channels-first convolution data and a Dense become such flips.
"""

from __future__ import annotations

from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node
from sparsec.compiler.ops import DENSE

NAME = "choose-layouts"


def run(graph: Graph, ctx) -> Graph:
    if ctx.layouts is None:
        return graph
    graph = graph.copy()
    readers = graph.consumers()
    outside = set(graph.inputs) | set(graph.outputs)

    def reads_feature_major(user: Node, name: str) -> bool:
        return (user.op == DENSE and user.inputs[0] == name and name not in user.inputs[1:]
                and not user.attrs.get("trans_a", 0)
                and ctx.layouts(graph, user).reads_feature_major)

    def flips_back(user: Node, name: str) -> bool:
        """A 2-D Transpose that would hand this tensor on row-major, byte for byte."""
        return (user.op == "Transpose" and user.inputs[0] == name
                and len(graph.tensors[name].shape) == 2
                and list(user.attrs.get("perm") or [1, 0]) == [1, 0])

    for node in graph.nodes:
        name = node.outputs[0] if node.outputs else ""
        if not name or name in outside or len(graph.tensors[name].shape) < 2:
            continue
        users = readers.get(name, [])
        if not users:
            continue
        if node.op == DENSE and ctx.layouts(graph, node).writes_feature_major:
            wanted = all(reads_feature_major(u, name) or flips_back(u, name) for u in users)
        elif (node.op == "Transpose" and len(graph.tensors[name].shape) == 2
              and list(node.attrs.get("perm") or [1, 0]) == [1, 0]
              and graph.tensors[node.inputs[0]].layout != FEATURE_MAJOR):
            wanted = all(reads_feature_major(u, name) for u in users)
        else:
            continue
        if wanted:
            graph.tensors[name].layout = FEATURE_MAJOR
            ctx.log.append(f"{NAME}: {name!r} feature-major between "
                           f"{node.name or '?'} and {', '.join(u.name or '?' for u in users)}")
    return graph
