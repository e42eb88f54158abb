"""Add a conv's residual connection, and the activation after it, in its Dense's epilogue.

Requires: kernels are chosen (select_kernels) and layouts too (choose_layouts); `ctx.layouts`
says which Dense kernels add a residual.
Establishes: where a Dense with no activation of its own writes its output feature-major and
hands it through lower_conv's flip and Reshape to an Add with a tensor R of the same shape
(a ResNet block's shortcut), which alone reads it, the Dense takes R as its fourth input and
adds it after its bias; a Relu or Clip that alone reads the sum becomes the Dense's
activation. The flip and the Reshape stay (they move no byte) and now write the sum; the Add
and the activation are gone. The feature-major output [M, pixels] and R [1, M, H, W] are the
same bytes, so the kernel adds R where it stores each output vector: in ResNet-50 the Adds and
Relus were two more passes over every block's output.
"""

from __future__ import annotations

from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes.fusion.match import clip_bounds
from sparsec.compiler.passes.fusion.rewrite import Uses

NAME = "absorb-residual"

RESIDUAL_ACTIVATIONS = ("Relu", "Clip")


def run(graph: Graph, ctx) -> Graph:
    if ctx.layouts is None:
        return graph
    sole_reader = Uses(graph).sole_reader
    found, claimed = [], set()
    for node in graph.nodes:
        if node.op == DENSE and ctx.layouts(graph, node).adds_residual:
            chain = _residual_chain(graph, node, sole_reader)
            # A downsampling block adds two convs' outputs: the Add goes to one of them, and
            # the other's output becomes its residual.
            if chain is not None and id(chain[2]) not in claimed:
                claimed.add(id(chain[2]))
                found.append((node, *chain))
    if not found:
        return graph
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    graph = graph.copy()
    # The fused Dense runs where the Add ran: its residual may be written after the Dense's
    # own place (a downsampling block's shortcut conv), never after the Add.
    moved: dict[int, list[Node]] = {}
    gone: set[int] = set()
    for dense, flip, reshape, add, activation in found:
        residual = add.inputs[1] if add.inputs[0] == reshape.outputs[0] else add.inputs[0]
        kind, bounds = "", ()
        if activation is not None:
            kind = activation.op
            bounds = clip_bounds(graph, activation) if kind == "Clip" else ()
            gone.add(position[id(activation)])
        original, flip_copy, reshape_copy = (graph.nodes[position[id(node)]]
                                             for node in (dense, flip, reshape))
        fused = Node(original.op, [*original.inputs[:3], residual], list(original.outputs),
                     dict(original.attrs, activation=kind, activation_params=bounds),
                     original.name, kernel=original.kernel, dispatch=original.dispatch)
        # The Reshape now writes what the Add (or the activation) wrote.
        reshape_copy.outputs = [(activation or add).outputs[0]]
        moved[position[id(add)]] = [fused, flip_copy, reshape_copy]
        gone.update(position[id(node)] for node in (dense, flip, reshape, add))
        ctx.log.append(f"{NAME}: {dense.name or '?'} adds {residual!r}"
                       + (f" then {kind}" if kind else ""))
    nodes = []
    for index, node in enumerate(graph.nodes):
        nodes.extend(moved.get(index, ()))
        if index not in gone:
            nodes.append(node)
    graph.nodes = nodes
    graph.remove_unused()
    return graph


def _residual_chain(graph: Graph, dense: Node, sole_reader):
    """(flip, reshape, add, activation or None) when `dense` feeds a same-shape residual
    Add."""
    if dense.attrs.get("activation") or len(dense.inputs) > 3 or dense.attrs.get("quantize"):
        return None
    product = graph.tensors[dense.outputs[0]]
    if product.layout != FEATURE_MAJOR or len(product.shape) != 2 \
            or product.dtype != "float32":
        return None
    flip = sole_reader(product.name)
    if flip is None or flip.op != "Transpose" or list(flip.attrs.get("perm") or [1, 0]) != [1, 0]:
        return None
    reshape = sole_reader(flip.outputs[0])
    if reshape is None or reshape.op != "Reshape" or reshape.inputs[0] != flip.outputs[0]:
        return None
    add = sole_reader(reshape.outputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return None
    summed = graph.tensors[reshape.outputs[0]]
    other = graph.tensors[add.inputs[1] if add.inputs[0] == summed.name else add.inputs[0]]
    total = graph.tensors[add.outputs[0]]
    if (other.shape != summed.shape or other.dtype != "float32" or other.is_constant
            or other.layout == FEATURE_MAJOR or total.shape != summed.shape):
        return None
    activation = sole_reader(add.outputs[0])
    if activation is not None and (
            activation.op not in RESIDUAL_ACTIVATIONS or activation.inputs[0] != add.outputs[0]
            or (activation.op == "Clip" and clip_bounds(graph, activation) is None)):
        activation = None
    return flip, reshape, add, activation
