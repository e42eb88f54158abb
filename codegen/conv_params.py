"""Parameters of the convolution kernels lower_conv leaves behind: Im2Col (the patch matrix
a Dense multiplies) and DepthwiseConv. Both work on NCHW activations, channel planes
contiguous, and split their work into planes (one task per channel or row of patches)."""

from __future__ import annotations

from sparsec.codegen.params import KernelRequest, activation_statements, c_float

# Aim for tasks of about this many output elements: enough to amortise handing a task out,
# few enough that 2-16 threads share a layer evenly.
ELEMENTS_PER_TASK = 16384


def _geometry(req: KernelRequest) -> dict:
    attrs = req.node.attrs
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["dilations"]
    top, left, _bottom, _right = attrs["pads"]
    ho, wo = attrs["out"]
    x = req.input(0)
    _n, _c, h, w = x.shape
    # Output columns whose every tap lands inside the row: [interior_begin, interior_end)
    # run without bounds checks, so GCC vectorises them.
    begin = min(wo, max(0, -(-left // sw)))
    end = max(begin, min(wo, (w - 1 - (kw - 1) * dw + left) // sw + 1))
    return dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, top=top, left=left, h=h, w=w, ho=ho,
                wo=wo, interior_begin=begin, interior_end=end)


def _per_task(plane: int) -> int:
    return max(1, ELEMENTS_PER_TASK // max(plane, 1))


def im2col_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    n, c = x.shape[0], x.shape[1]
    geometry = _geometry(req)
    req.take(x)
    req.take(y)
    plane = geometry["ho"] * geometry["wo"]
    return dict(geometry, n=n, c=c, rows=n * c * geometry["kh"] * geometry["kw"],
                ROWS_PER_TASK=_per_task(plane))


def depthwise_params(req: KernelRequest) -> dict:
    node = req.node
    x, w, bias, y = req.input(0), req.input(1), req.input(2), req.output()
    n, c = x.shape[0], x.shape[1]
    geometry = _geometry(req)
    activation = node.attrs.get("activation", "")
    low, high = (node.attrs.get("activation_params") or (None, None))[:2] \
        if activation == "Clip" else (None, None)
    req.take(x)
    req.take(w)
    req.take(bias)
    req.take(y)
    plane = geometry["ho"] * geometry["wo"]
    bounds = (c_float(low), c_float(high)) if activation == "Clip" else ()
    return dict(geometry, n=n, c=c, has_bias=bias is not None,
                activate=activation_statements(activation, bounds, "float32", "out[ow]"),
                PLANES_PER_TASK=_per_task(plane))
