"""Parameters of the convolution kernels lower_conv leaves behind: Im2Col (the patch matrix
a Dense multiplies) and DepthwiseConv. Both work on NCHW activations, channel planes
contiguous, and split their work into planes (one task per channel or row of patches)."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.activations import activation_statements
from sparsec.codegen.c_literals import c_float
from sparsec.codegen.isa import TOKEN_TILE_ISAS
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import Graph, Node

# Aim for tasks of about this many output elements: enough to amortise handing a task out,
# few enough that 2-16 threads share a layer evenly.
ELEMENTS_PER_TASK = 16384


def _geometry(graph: Graph, node: Node) -> dict:
    """lower_conv's attributes as the templates' parameters, with the input plane's size."""
    attrs = node.attrs
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["dilations"]
    top, left, _bottom, _right = attrs["pads"]
    ho, wo = attrs["out"]
    _n, _c, h, w = graph.tensors[node.inputs[0]].shape
    return dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, top=top, left=left, h=h, w=w, ho=ho,
                wo=wo)


def _per_task(plane: int) -> int:
    return max(1, ELEMENTS_PER_TASK // max(plane, 1))


def im2col_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    n, c = x.shape[0], x.shape[1]
    geometry = _geometry(req.graph, req.node)
    req.take(x)
    req.take(y)
    plane = geometry["ho"] * geometry["wo"]
    return dict(geometry, n=n, c=c, rows=n * c * geometry["kh"] * geometry["kw"],
                ROWS_PER_TASK=_per_task(plane))


# Channels per DepthwiseConv task: a whole AVX-512 vector, two AVX2 or four NEON ones.
DEPTHWISE_BLOCK = 16


def _padded_plane(geometry: dict) -> tuple[int, int]:
    """Rows and columns of the zero-padded input plane every output pixel's taps fall in."""
    hp = max(geometry["h"] + geometry["top"],
             (geometry["ho"] - 1) * geometry["sh"] + (geometry["kh"] - 1) * geometry["dh"] + 1)
    wp = max(geometry["w"] + geometry["left"],
             (geometry["wo"] - 1) * geometry["sw"] + (geometry["kw"] - 1) * geometry["dw"] + 1)
    return hp, wp


# The SIMD depthwise rows move channel blocks in chunks of up to 16 pixels (AVX-512's square
# transpose; AVX2 and NEON take 8 and 4): ring slots and the output row hold whole chunks.
DEPTHWISE_CHUNK = 16


def _depthwise_rows(geometry: dict) -> tuple[int, int, int]:
    """Input rows a window spans (the ring's slots), a slot's width in pixels and the
    output row's, each rounded up to whole chunks."""
    _hp, wp = _padded_plane(geometry)
    span = (geometry["kh"] - 1) * geometry["dh"] + 1
    slot = max(wp, geometry["left"] + -(-geometry["w"] // DEPTHWISE_CHUNK) * DEPTHWISE_CHUNK)
    return span, slot, -(-geometry["wo"] // DEPTHWISE_CHUNK) * DEPTHWISE_CHUNK


def depthwise_params(req: KernelRequest, isa: str | None = None) -> dict:
    """isa: the SIMD ISA whose transposes move full channel blocks (None: scalar copies)."""
    node = req.node
    x, w, bias, y = req.input(0), req.input(1), req.input(2), req.output()
    n, c = x.shape[0], x.shape[1]
    geometry = _geometry(req.graph, req.node)
    hp, wp = _padded_plane(geometry)
    blocks = -(-c // DEPTHWISE_BLOCK)
    taps = geometry["kh"] * geometry["kw"]
    packed = np.zeros((blocks * DEPTHWISE_BLOCK, taps), np.float32)
    packed[:c] = w.data.reshape(c, taps)
    packed = packed.reshape(blocks, DEPTHWISE_BLOCK, taps).transpose(0, 2, 1)
    span, slot, out_row = _depthwise_rows(geometry)
    params = dict(geometry, n=n, c=c, hp=hp, wp=wp, CB=DEPTHWISE_BLOCK, blocks=blocks,
                  SPAN=span, WS=slot, WO=out_row,
                  packed=req.blob.add(np.ascontiguousarray(packed)), has_bias=bias is not None)
    if bias is not None:
        padded = np.zeros(blocks * DEPTHWISE_BLOCK, np.float32)
        padded[:c] = bias.data
        params["bias_packed"] = req.blob.add(padded)
    activation = node.attrs.get("activation", "")
    bounds = tuple(c_float(b) for b in node.attrs["activation_params"]) \
        if activation == "Clip" else ()
    params["activate"] = activation_statements(activation, bounds, "float32", "v")
    if isa is not None:
        params["isa"] = TOKEN_TILE_ISAS[isa].template_names()
    req.take(x)
    req.take(y)
    return params


def depthwise_scratch(graph: Graph, node: Node) -> int:
    """Per task (image and block of channels): the ring of padded input rows a window
    spans, a zero row, and one output row."""
    x = graph.tensors[node.inputs[0]]
    span, slot, out_row = _depthwise_rows(_geometry(graph, node))
    blocks = -(-x.shape[1] // DEPTHWISE_BLOCK)
    return 4 * x.shape[0] * blocks * ((span + 1) * slot + out_row) * DEPTHWISE_BLOCK
