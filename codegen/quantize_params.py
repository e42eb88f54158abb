"""Template parameters for the quantization operators (templates/x-quantize): QuantizeLinear
and DequantizeLinear with a scale per tensor or per axis, and DynamicQuantizeLinear."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.loops import elementwise_loops
from sparsec.codegen.request import KernelRequest
from sparsec.errors import KernelNotFoundError


def quantize_linear_params(req: KernelRequest) -> dict:
    """QuantizeLinear / DequantizeLinear with a scale (and zero point) per tensor or per axis."""
    node, x, scale, zero_point, y = req.node, req.input(0), req.input(1), req.input(2), \
        req.output()
    if node.attrs.get("block_size", 0):
        raise KernelNotFoundError(f"node {node.name!r}: {node.op} with block_size (blocked "
                                  "quantization); sparsec takes per-tensor or per-axis scales")
    if scale.dtype != "float32" or (node.op == "DequantizeLinear" and y.dtype != "float32"):
        raise KernelNotFoundError(f"node {node.name!r}: {node.op} in {scale.dtype}; sparsec "
                                  "quantizes from and dequantizes to float32")
    rank = len(x.shape)
    axis = int(node.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if scale.size == 1:
        aligned = (1,) * rank
    elif len(scale.shape) == 1 and rank and scale.shape[0] == x.shape[axis]:
        aligned = tuple(scale.shape[0] if d == axis else 1 for d in range(rank))
    else:
        raise KernelNotFoundError(f"node {node.name!r}: {node.op} scale of shape {scale.shape} "
                                  f"for input {x.shape} along axis {axis}")
    loops, (y_index, x_index, s_index, z_index) = elementwise_loops(
        y.shape, [x.shape, aligned, aligned])
    for tensor in (x, scale, zero_point, y):
        req.take(tensor)
    params = {"op": node.op, "x_ctype": CTYPES[x.dtype], "y_ctype": CTYPES[y.dtype],
              "zp_ctype": CTYPES[zero_point.dtype] if zero_point is not None else "",
              "loops": loops, "y_index": y_index, "x_index": x_index, "s_index": s_index,
              "z_index": z_index}
    if node.op == "QuantizeLinear":
        if y.dtype not in ("uint8", "int8", "uint16", "int16"):
            raise KernelNotFoundError(f"node {node.name!r}: QuantizeLinear to {y.dtype}; "
                                      "sparsec quantizes to 8- and 16-bit integers")
        info = np.iinfo(y.dtype)
        params.update(low=int(info.min), high=int(info.max))
    return params


def dynamic_quantize_params(req: KernelRequest) -> dict:
    x = req.input(0)
    req.take(x)
    for index in range(3):
        req.take(req.output(index))
    return {"count": x.size}
