"""Template parameters for the data-movement kernels: byte copies (Reshape, Squeeze, ...:
templates/x-copy), Transpose, Gather, Concat, Expand, Slice and Cast (x-transpose, x-gather,
x-concat, x-expand, x-slice, x-cast)."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.cnames import c_string_literal
from sparsec.codegen.isa import TOKEN_TILE_ISAS
from sparsec.codegen.loops import coalesce, contiguous_strides, elementwise_loops, loop_nest
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import is_layout_flip
from sparsec.errors import KernelNotFoundError


def copy_params(req: KernelRequest) -> dict:
    """A byte copy; a Reshape whose target shape is a run-time input also checks that shape,
    since the compiled output shape cannot change."""
    x, y = req.input(0), req.output()
    axes = req.input(1) if req.node.op in ("Squeeze", "Unsqueeze") else None
    check_axes = req.node.op if axes is not None and not axes.is_constant else ""
    shape = req.input(1) if req.node.op == "Reshape" else None
    req.take(x)
    req.checked = bool(check_axes) or (shape is not None and not shape.is_constant)
    if req.checked:
        req.take(axes if check_axes else shape)
    req.take(y)
    return {"nbytes": y.nbytes, "check_shape": req.checked and not check_axes,
            "check_axes": check_axes, "axes_count": axes.size if check_axes else 0,
            "input_dims": list(x.shape),
            "output_dims": list(y.shape), "output_text": str(list(y.shape)),
            "allowzero": int(req.node.attrs.get("allowzero", 0)),
            "node_literal": c_string_literal(req.node.name)}


# Elements a Transpose task moves: as LAYER_NORM_ELEMENTS_PER_TASK, enough that handing it
# to a thread pays; a smaller transpose is one task, run by the caller.
TRANSPOSE_ELEMENTS_PER_TASK = 4096


# A matrix transpose moves 16 x 16 tiles: 16 output rows take one 64-byte line of each input
# row they read, instead of a line per element as an output row walks down an input column.
TRANSPOSE_TILE = 16


def transpose_params(req: KernelRequest, isa: str | None = None) -> dict:
    """isa: a SIMD ISA whose square transpose moves whole fp32 tiles (None: element by
    element)."""
    x, y = req.input(0), req.output()
    if is_layout_flip(req.graph, req.node):  # choose_layouts: the bytes are already in order
        req.take(x)
        req.take(y)
        return {"ctype": CTYPES[y.dtype], "flip_bytes": y.nbytes, "tile": 0}
    if x.layout != "row-major" or y.layout != "row-major":
        raise KernelNotFoundError(f"node {req.node.name!r}: Transpose between layouts "
                                  f"{x.layout} and {y.layout} that is not a 2-D flip")
    perm = req.node.attrs.get("perm") or list(reversed(range(len(x.shape))))
    x_strides = contiguous_strides(x.shape)
    dims, strides = coalesce(list(y.shape), [contiguous_strides(y.shape),
                                             [x_strides[p] for p in perm]])
    loops, (y_index, x_index) = loop_nest(dims, strides)
    req.take(x)
    req.take(y)
    inner = int(np.prod(dims[1:])) if dims else 1
    params = {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "x_index": x_index,
              "flip_bytes": 0, "tile": 0,
              "OUTER_PER_TASK": max(1, -(-TRANSPOSE_ELEMENTS_PER_TASK // max(inner, 1)))}
    if len(dims) in (2, 3):
        rows, cols = dims[-2:]  # y is [batch][rows][cols] = x [batch][cols][rows] transposed
        (y_s, x_s) = strides
        matrix = (y_s[-2:] == [cols, 1] and x_s[-2:] == [1, rows]
                  and (len(dims) == 2 or y_s[0] == x_s[0] == rows * cols))
        if matrix:
            params.update(tile=TRANSPOSE_TILE, batch=dims[0] if len(dims) == 3 else 1,
                          rows=rows, cols=cols)
            if isa is not None:
                params["isa"] = TOKEN_TILE_ISAS[isa].template_names()
    return params


def gather_params(req: KernelRequest) -> dict:
    data, indices, y = req.input(0), req.input(1), req.output()
    rank = len(data.shape)
    axis = req.node.attrs.get("axis", 0)
    axis = axis + rank if axis < 0 else axis
    req.checked = True
    for tensor in (data, indices, y):
        req.take(tensor)
    return {"itype": CTYPES[indices.dtype], "outer": int(np.prod(data.shape[:axis])),
            "axis_dim": data.shape[axis], "count": indices.size,
            "inner_bytes": int(np.prod(data.shape[axis + 1:])) * np.dtype(data.dtype).itemsize,
            "node_literal": c_string_literal(req.node.name)}


def concat_params(req: KernelRequest) -> dict:
    y = req.output()
    rank = len(y.shape)
    axis = req.node.attrs.get("axis", 0)
    axis = axis + rank if axis < 0 else axis
    itemsize = np.dtype(y.dtype).itemsize
    inner = int(np.prod(y.shape[axis + 1:]))
    slabs = []
    for index in range(len(req.node.inputs)):
        x = req.input(index)
        req.take(x)
        slabs.append(x.shape[axis] * inner * itemsize)
    req.take(y)
    return {"outer": int(np.prod(y.shape[:axis])), "slabs": slabs, "row_bytes": sum(slabs)}


def expand_params(req: KernelRequest) -> dict:
    x, shape, y = req.input(0), req.input(1), req.output()
    loops, (y_index, x_index) = elementwise_loops(y.shape, [x.shape])
    req.take(x)
    req.checked = not shape.is_constant
    if req.checked:
        req.take(shape)
    req.take(y)
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "x_index": x_index,
            "check": req.checked, "shape_count": shape.size, "input_dims": list(x.shape),
            "output_dims": list(y.shape), "output_text": str(list(y.shape)),
            "node_literal": c_string_literal(req.node.name)}


def slice_params(req: KernelRequest) -> dict:
    """Slice-10+: every bound is an input, read by the kernel (constants from the blob)."""
    x, y = req.input(0), req.output()
    starts, ends, axes, steps = (req.input(i) for i in (1, 2, 3, 4))
    if "starts" in req.node.attrs:
        raise KernelNotFoundError(f"node {req.node.name!r}: Slice before opset 10 (bounds as "
                                  "attributes) is not supported")
    req.checked = True
    for tensor in (x, starts, ends, axes, steps, y):
        req.take(tensor)
    loops = [{"var": f"i{d}", "extent": dim} for d, dim in enumerate(y.shape)]
    return {"ctype": CTYPES[y.dtype], "itype": CTYPES[starts.dtype], "count": starts.size,
            "has_axes": axes is not None, "has_steps": steps is not None,
            "input_dims": list(x.shape), "output_dims": list(y.shape),
            "x_strides": contiguous_strides(x.shape), "loops": loops,
            "node_literal": c_string_literal(req.node.name)}


def cast_expression(source: str, target: str) -> str:
    """The conversion of `v`; to float16 from float32 only (cast_params widens a float16
    source first): from another type it would round twice."""
    if target == "float16":
        if source != "float32":
            raise KernelNotFoundError(f"Cast from {source} to float16: sparsec converts to "
                                      "float16 from float32 only")
        return "sparsec__f32_to_f16(v)"
    ctype = CTYPES[target]
    if target == "bool":
        return "(uint8_t)(v != 0)"
    if source.startswith("float") and not target.startswith("float"):
        if target == "uint64":  # beyond int64: saturate in double first
            return ("(uint64_t)(v != v || v <= 0 ? 0 : v >= 18446744073709551615.0 ? "
                    "UINT64_MAX : (uint64_t)v)")
        return f"({ctype})sparsec__saturate_i64((double)v)"
    return f"({ctype})v"


def cast_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    req.take(x)
    req.take(y)
    params = {"x_ctype": CTYPES[x.dtype], "y_ctype": CTYPES[y.dtype], "count": y.size,
              "expression": cast_expression(x.dtype, y.dtype)}
    if x.dtype == "float16":  # every float16 is a float32: widen exactly, then convert
        params.update(value_ctype="float", load="sparsec__f16_to_f32(x[i])",
                      expression=cast_expression("float32", y.dtype))
    return params
