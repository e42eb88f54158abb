"""Let a stride-1 conv's Dense read its patches straight from the input, with no Im2Col.

Requires: kernels are chosen (select_kernels) and layouts too (choose_layouts); `ctx.layouts`
says which Dense kernels can read patches in place.
Establishes: a Dense whose activations are Im2Col(X) patches handed over by a layout flip,
where that Dense alone reads them and its kernel `reads_patches`, reads X [1, C, H, W] itself.
It carries the Im2Col's geometry as its `patches` attribute, and the Im2Col and the flip are
gone. The conv must have stride 1 and keep the width (Wo == W, which "same" padding does), so
that tap (i, j) of the output pixels p .. p+T is X's plane read from p + (i*dh - top)*W +
(j*dw - left) on: one shifted row, with the lanes that fall in the padding masked. A 3x3 conv
at 56x56 with 64 channels wrote and read back a 7 MB patch matrix, more than an L2, where X
itself is 0.8 MB.

The Dense's weight rows are Im2Col's (tap-major), so its logical A is unchanged: only where
the kernel finds each row differs. `dense_rows` gives the rows (output pixels) either way.
"""

from __future__ import annotations

from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node
from sparsec.compiler.ops import DENSE, IM2COL
from sparsec.compiler.passes.fusion.rewrite import Uses

NAME = "absorb-patches"

# The kernels index X's rows by int32 block rows times the plane: keep X's offsets well inside.
MAX_ELEMENTS = 1 << 30


def run(graph: Graph, ctx) -> Graph:
    if ctx.layouts is None:
        return graph
    uses = Uses(graph)
    found = []
    for node in graph.nodes:
        if node.op != DENSE or not ctx.layouts(graph, node).reads_patches:
            continue
        chain = _patch_chain(graph, node, uses)
        if chain is not None:
            found.append((node, *chain))
    if not found:
        return graph
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    graph = graph.copy()
    gone: set[int] = set()
    for dense, flip, im2col in found:
        # graph.copy() keeps the node order; records are new, so find them by position.
        index = position[id(dense)]
        original = graph.nodes[index]
        geometry = {key: im2col.attrs[key] for key in
                    ("kernel", "strides", "dilations", "pads", "out")}
        graph.nodes[index] = Node(original.op, [im2col.inputs[0], *original.inputs[1:]],
                                  list(original.outputs),
                                  dict(original.attrs, patches=geometry), original.name,
                                  kernel=original.kernel, dispatch=original.dispatch)
        gone.update((position[id(flip)], position[id(im2col)]))
        ctx.log.append(f"{NAME}: {dense.name or '?'} reads its patches from "
                       f"{im2col.inputs[0]!r}")
    graph.nodes = [node for index, node in enumerate(graph.nodes) if index not in gone]
    graph.remove_unused()
    return graph


def _patch_chain(graph: Graph, dense: Node, uses: Uses) -> tuple[Node, Node] | None:
    """(flip, im2col) when `dense` reads Im2Col patches through a layout flip that nothing
    else reads, and the conv's geometry lets a shifted row stand for each patch row."""
    rows = dense.inputs[0]
    if dense.attrs.get("trans_a", 0) or graph.tensors[rows].layout != FEATURE_MAJOR:
        return None
    flip = uses.producers.get(rows)
    if flip is None or flip.op != "Transpose" or uses.sole_reader(rows) is None:
        return None
    patches = flip.inputs[0]
    im2col = uses.producers.get(patches)
    if im2col is None or im2col.op != IM2COL or uses.sole_reader(patches) is None:
        return None
    x = graph.tensors[im2col.inputs[0]]
    if len(x.shape) != 4 or x.shape[0] != 1 or x.size >= MAX_ELEMENTS:
        return None
    # A block of R weight rows must lie in one tap: R consecutive channels of it (a dense
    # weight's rows are single ones).
    sparsity = graph.tensors[dense.inputs[1]].sparsity
    if sparsity is None:
        return None
    if sparsity.packed is not None and x.shape[1] % sparsity.packed.rows:
        return None
    attrs = im2col.attrs
    (_kh, kw), (_dh, dw) = attrs["kernel"], attrs["dilations"]
    _top, left, _bottom, right = attrs["pads"]
    width = x.shape[3]
    keeps_width = attrs["out"][1] == width and left + right == (kw - 1) * dw
    if list(attrs["strides"]) != [1, 1] or not keeps_width:
        return None
    return flip, im2col


def dense_rows(graph: Graph, node: Node) -> int:
    """Activation rows of a Dense node (output pixels where it reads patches from X)."""
    if "patches" in node.attrs:
        out_h, out_w = node.attrs["patches"]["out"]
        return out_h * out_w
    k = graph.tensors[node.inputs[1]].shape[0]
    return graph.tensors[node.inputs[0]].size // k if k else 0
