"""Template parameters for the operators exporters use to build position ids and masks:
CumSum, GatherElements, GatherND, and IsNaN (the guard around scaled_dot_product_attention).

Indices and axes arrive at run time (constants come from the weight blob the same way); each
kernel checks them against the compiled shapes and stops the run with a message naming the
node, never reading outside its input.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.cnames import c_string_literal
from sparsec.codegen.loops import contiguous_strides
from sparsec.codegen.request import KernelRequest
from sparsec.errors import KernelNotFoundError


def isnan_params(req: KernelRequest) -> dict:
    """For the x-cast template: NaN is the one value not equal to itself (the model's code is
    built without -ffast-math, so the comparison stays)."""
    x, y = req.input(0), req.output()
    req.take(x)
    req.take(y)
    return {"x_ctype": CTYPES[x.dtype], "y_ctype": CTYPES[y.dtype], "count": y.size,
            "expression": "(uint8_t)(v != v)"}


def cumsum_params(req: KernelRequest) -> dict:
    """Integers sum in uint64_t, so overflow wraps (as numpy's and onnxruntime's do) instead
    of being undefined."""
    x, axis, y = req.input(0), req.input(1), req.output()
    if not x.shape:
        raise KernelNotFoundError(f"node {req.node.name!r}: CumSum of a scalar; ONNX needs "
                                  "rank 1 or more")
    req.checked = True
    for tensor in (x, axis, y):
        req.take(tensor)
    floating = x.dtype.startswith("float")
    return {"ctype": CTYPES[x.dtype], "atype": CTYPES[axis.dtype],
            "acc_ctype": CTYPES[x.dtype] if floating else "uint64_t",
            "dims": list(x.shape), "exclusive": int(req.node.attrs.get("exclusive", 0)),
            "reverse": int(req.node.attrs.get("reverse", 0)),
            "node_literal": c_string_literal(req.node.name)}


def gather_elements_params(req: KernelRequest) -> dict:
    data, indices, y = req.input(0), req.input(1), req.output()
    rank = len(data.shape)
    axis = int(req.node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or len(indices.shape) != rank:
        raise KernelNotFoundError(f"node {req.node.name!r}: GatherElements axis {axis} or "
                                  f"indices of rank {len(indices.shape)} do not fit data of "
                                  f"rank {rank}")
    req.checked = True
    for tensor in (data, indices, y):
        req.take(tensor)
    strides = contiguous_strides(data.shape)
    return {"ctype": CTYPES[data.dtype], "itype": CTYPES[indices.dtype], "count": y.size,
            "loops": [{"var": f"i{d}", "extent": n} for d, n in enumerate(indices.shape)],
            "offset": " + ".join(f"i{d} * {s}" for d, s in enumerate(strides) if d != axis)
            or "0", "axis_stride": strides[axis], "axis_dim": data.shape[axis],
            "node_literal": c_string_literal(req.node.name)}


def gather_nd_params(req: KernelRequest) -> dict:
    """Each index tuple (the last axis of indices) selects a slice of data after the batch
    dimensions; slices are copied whole."""
    data, indices, y = req.input(0), req.input(1), req.output()
    batch_dims = int(req.node.attrs.get("batch_dims", 0))
    k = indices.shape[-1] if indices.shape else 0
    if not indices.shape or batch_dims < 0 or batch_dims + k > len(data.shape):
        raise KernelNotFoundError(f"node {req.node.name!r}: GatherND indices of shape "
                                  f"{list(indices.shape)} (batch_dims {batch_dims}) do not fit "
                                  f"data of shape {list(data.shape)}")
    req.checked = True
    for tensor in (data, indices, y):
        req.take(tensor)
    batch = int(np.prod(data.shape[:batch_dims], dtype=np.int64))
    tuples = int(np.prod(indices.shape[batch_dims:-1], dtype=np.int64))
    dims = list(data.shape[batch_dims:batch_dims + k])
    inner = contiguous_strides(data.shape[batch_dims:])
    return {"ctype": CTYPES[data.dtype], "itype": CTYPES[indices.dtype], "batch": batch,
            "tuples": tuples, "k": k, "dims": dims, "strides": inner[:k],
            "batch_stride": int(np.prod(data.shape[batch_dims:], dtype=np.int64)),
            "slice": int(np.prod(data.shape[batch_dims + k:], dtype=np.int64)),
            "node_literal": c_string_literal(req.node.name)}
