"""Let a conv's Dense read its patches straight from the input, with no patch matrix.

Requires: kernels are chosen (select_kernels) and layouts too (choose_layouts); `ctx.layouts`
says which Dense kernels can read patches in place.
Establishes: a Dense whose activations are Im2Col(X) patches handed over by a layout flip,
where that Dense alone reads them and its kernel `reads_patches`, reads X [1, C, H, W] itself.
It carries the Im2Col's geometry as its `patches` attribute, and the flip is gone. A stride-1
conv must keep the width (Wo == W, which "same" padding does), so that tap (i, j) of the
output pixels p .. p+T is X's plane read from p + (i*dh - top)*W + (j*dw - left) on: one
shifted row, with the lanes that fall in the padding masked; its Im2Col is gone too. A 3x3
conv at 56x56 with 64 channels wrote and read back a 7 MB patch matrix, more than an L2, where
X itself is 0.8 MB.

A conv of stride (sh, sw) > 1 whose taps read every phase of it, with H and W multiples of the
stride and Wo == W / sw (ResNet's and MobileNet's stride-2 convs, the 7x7 stem), keeps its
Im2Col with the kernel set to the stride: that splits X into its sh*sw phases, [sh][sw][C]
planes of (H/sh) x (W/sw), once (the stem's 147-row patch matrix was 7.4 MB, its phases are
0.6 MB). Tap (i, j) then reads phase ((i*dh - top) mod sh, (j*dw - left) mod sw), shifted by
the floors of those over the stride: a shifted row again, since the phase planes are Wo wide.
The attribute says what the Dense reads: `channels` C and `plane` (its rows and columns).

The Dense's weight rows are Im2Col's (tap-major), so its logical A is unchanged: only where
the kernel finds each row differs. `dense_rows` gives the rows (output pixels) either way.
"""

from __future__ import annotations

import dataclasses

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
        _n, channels, height, width = graph.tensors[im2col.inputs[0]].shape
        sh, sw = geometry["strides"]
        geometry.update(channels=channels, plane=[height // sh, width // sw])
        source = im2col.inputs[0]
        gone.add(position[id(flip)])
        if [sh, sw] == [1, 1]:
            gone.add(position[id(im2col)])
        else:  # the Im2Col stays, to split X into its phases
            source = im2col.outputs[0]
            split = graph.nodes[position[id(im2col)]]
            split.attrs = dict(split.attrs, kernel=[sh, sw], dilations=[1, 1],
                               pads=[0, 0, 0, 0], out=geometry["plane"])
            phases = graph.tensors[source]
            graph.tensors[source] = dataclasses.replace(
                phases, shape=(sh * sw * channels, height // sh * (width // sw)))
        graph.nodes[index] = Node(original.op, [source, *original.inputs[1:]],
                                  list(original.outputs),
                                  dict(original.attrs, patches=geometry), original.name,
                                  kernel=original.kernel, dispatch=original.dispatch)
        ctx.log.append(f"{NAME}: {dense.name or '?'} reads its patches from {source!r}")
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
    (kh, kw), (dh, dw), (sh, sw) = attrs["kernel"], attrs["dilations"], attrs["strides"]
    top, left = attrs["pads"][0], attrs["pads"][1]
    height, width = x.shape[2], x.shape[3]
    # The output's rows must be the (phase) plane's rows, Wo == W / sw, for token p + 1 to be
    # the next float of a shifted row; rows past the plane's end are masked, as padding.
    if height % sh or width % sw or attrs["out"][1] != width // sw:
        return None
    # A phase no tap reads (a 1x1 stride-2 conv reads one of four) would be split for nothing:
    # Im2Col's subsample writes less.
    rows_read = {(i * dh - top) % sh for i in range(kh)}
    columns_read = {(j * dw - left) % sw for j in range(kw)}
    if len(rows_read) != sh or len(columns_read) != sw:
        return None
    return flip, im2col


def dense_rows(graph: Graph, node: Node) -> int:
    """Activation rows of a Dense node (output pixels where it reads patches from X)."""
    if "patches" in node.attrs:
        out_h, out_w = node.attrs["patches"]["out"]
        return out_h * out_w
    k = graph.tensors[node.inputs[1]].shape[0]
    return graph.tensors[node.inputs[0]].size // k if k else 0
