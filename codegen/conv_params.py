"""Parameters of the convolution kernels lower_conv leaves behind: Im2Col (the patch matrix
a Dense multiplies) and DepthwiseConv. Both work on NCHW activations, channel planes
contiguous, and split their work into planes (one task per channel or row of patches)."""

from __future__ import annotations

import numpy as np

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


# Floats per vector along a DepthwiseConv row where the target has no SIMD ISA: GCC lowers a
# 4-float vector to whatever the compile flags allow (SSE on x86-64, scalar code elsewhere).
PORTABLE_DEPTHWISE_LANES = 4


# Floats of input a DepthwiseConv band copies at most (two alternate): small enough that both
# stay in L1 beside what the taps stream, while bands of small planes take the whole plane.
DEPTHWISE_BAND_FLOATS = 2048


def _depthwise_layout(geometry: dict, lanes: int) -> dict:
    """How DepthwiseConv's rows are vectorised: V floats per vector, OV output columns (wo in
    whole vectors), PW columns per phase of a padded row (every padded column a vector's
    taps read), BR output rows per band, and G channel planes per task."""
    sw, sh = geometry["sw"], geometry["sh"]
    ov = -(-geometry["wo"] // lanes) * lanes
    reach = ((geometry["kw"] - 1) * geometry["dw"]) // sw
    pw = max(ov + reach, -(-(geometry["left"] + geometry["w"]) // sw))
    # Whole vectors a phase, so that every phase row starts aligned: a tap at a whole vector's
    # offset (a stride-2 3x3's columns 0 and 2 of 3, stride 1's first) loads one line, not
    # two. 7-9 % faster one-layer depthwise convs (x86-avx512, Zen 5; 6 % on x86-avx2 there).
    pw = -(-pw // lanes) * lanes
    span = (geometry["kh"] - 1) * geometry["dh"] + 1
    rows = max(span, DEPTHWISE_BAND_FLOATS // (sw * pw))
    band_rows = max(1, min(geometry["ho"], (rows - span) // sh + 1))
    return dict(V=lanes, OV=ov, PW=pw, BR=band_rows,
                G=_per_task(geometry["ho"] * geometry["wo"]))


def depthwise_params(req: KernelRequest, isa: str | None = None) -> dict:
    """isa: the SIMD ISA whose vectors run along the rows (None: portable C)."""
    node = req.node
    x, w, bias, y = req.input(0), req.input(1), req.input(2), req.output()
    n, c = x.shape[0], x.shape[1]
    geometry = _geometry(req.graph, req.node)
    layout = _depthwise_layout(geometry, _depthwise_lanes(isa))
    taps = geometry["kh"] * geometry["kw"]
    params = dict(geometry, **layout, n=n, c=c, groups=-(-c // layout["G"]),
                  packed=req.blob.add(np.ascontiguousarray(
                      w.data.reshape(c, taps), dtype=np.float32)),
                  has_bias=bias is not None)
    if bias is not None:
        params["bias_packed"] = req.blob.add(np.ascontiguousarray(bias.data, np.float32))
    params.update(_clamp_bounds(node.attrs.get("activation", ""),
                                node.attrs.get("activation_params", ())))
    req.take(x)
    req.take(y)
    return params


def _clamp_bounds(activation: str, bounds: tuple) -> dict:
    """Relu and Clip (lower_conv fuses no other activation into DepthwiseConv) as the bounds
    the template clamps each vector to: low and high, C literals or None."""
    if activation == "Relu":
        return dict(low=c_float(0.0), high=None)
    if activation == "Clip":
        return dict(low=c_float(bounds[0]), high=c_float(bounds[1]))
    if activation:
        raise ValueError(f"DepthwiseConv cannot apply {activation!r}: lower_conv fuses only "
                         "Relu and Clip into it")
    return dict(low=None, high=None)


def _depthwise_lanes(isa: str | None) -> int:
    return PORTABLE_DEPTHWISE_LANES if isa is None else TOKEN_TILE_ISAS[isa].lanes


def depthwise_scratch(graph: Graph, node: Node, isa: str | None = None) -> int:
    """Per task (image and group of channels): two bands of padded input rows, each row split
    into its stride's phases."""
    x = graph.tensors[node.inputs[0]]
    geometry = _geometry(graph, node)
    layout = _depthwise_layout(geometry, _depthwise_lanes(isa))
    groups = -(-x.shape[1] // layout["G"])
    rows = (layout["BR"] - 1) * geometry["sh"] + (geometry["kh"] - 1) * geometry["dh"] + 1
    return 4 * x.shape[0] * groups * 2 * rows * geometry["sw"] * layout["PW"]
