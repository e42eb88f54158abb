"""Template parameters for each kernel family, computed per node at compile time.

Python computes every shape, stride, offset and index expression; templates only print them.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.activations import VECTOR_MATH, activation_statements
from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.codegen.cnames import c_string_literal
from sparsec.codegen.loops import (
    broadcast_strides,
    coalesce,
    contiguous_strides,
    elementwise_loops,
    loop_nest,
)
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ops import ADD_LAYER_NORM
from sparsec.errors import KernelNotFoundError

# --- arithmetic as C expressions -------------------------------------------------------------

def binary_expression(op: str, dtype: str, a: str, b: str) -> str:
    """`a OP b` with ONNX semantics; integers wrap (unsigned arithmetic, never C's UB) and
    integer division by zero gives 0 instead of trapping."""
    ctype = CTYPES[dtype]
    comparison = {"Equal": "==", "Greater": ">", "Less": "<", "GreaterOrEqual": ">=",
                  "LessOrEqual": "<="}.get(op)
    if comparison:  # bool output (uint8 0/1); NaN compares false, as in ONNX
        return f"(uint8_t)({a} {comparison} {b})"
    if op in ("And", "Or", "Xor"):  # bool operands are 0/1 bytes
        return f"(uint8_t)({a} {dict(And='&', Or='|', Xor='^')[op]} {b})"
    if op == "Pow":  # an exponent of another type converts to the base's
        if dtype.startswith("float"):
            return f"pow{'f' if ctype == 'float' else ''}({a}, ({ctype}){b})"
        # integer base: pow in double, as onnxruntime, saturated instead of C's undefined
        # float-to-int conversion out of range
        return f"({ctype})sparsec__saturate_i64(pow((double){a}, (double){b}))"
    symbol = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}[op]
    if dtype in ("float32", "float64"):
        return f"{a} {symbol} {b}"
    wide = "uint64_t" if dtype.endswith("64") else "uint32_t"
    if op != "Div":
        return f"({ctype})(({wide}){a} {symbol} ({wide}){b})"
    if dtype.startswith("u"):
        return f"({b} == 0 ? ({ctype})0 : ({ctype})({a} / {b}))"
    return (f"({b} == 0 ? ({ctype})0 : {b} == -1 ? ({ctype})(({wide})0 - ({wide}){a})"
            f" : ({ctype})({a} / {b}))")


# --- elementwise, data movement, softmax -----------------------------------------------------

def binary_params(req: KernelRequest) -> dict:
    a, b, y = req.input(0), req.input(1), req.output()
    loops, (y_index, a_index, b_index) = elementwise_loops(y.shape, [a.shape, b.shape])
    for tensor in (a, b, y):
        req.take(tensor)
    return {"ctype": CTYPES[a.dtype], "b_ctype": CTYPES[b.dtype], "y_ctype": CTYPES[y.dtype],
            "loops": loops, "y_index": y_index,
            "expression": binary_expression(req.node.op, a.dtype, f"a[{a_index}]",
                                            f"b[{b_index}]")}


def unary_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    req.take(x)
    bounds, bound_args = clip_bounds(req) if req.node.op == "Clip" else ((), [])
    req.take(y)
    op = req.node.op
    if op == "Gelu":
        approximate = req.node.attrs.get("approximate", "none")
        if isinstance(approximate, bytes):
            approximate = approximate.decode()
        if approximate not in ("none", "tanh"):
            raise KernelNotFoundError(f"node {req.node.name!r}: Gelu approximate="
                                      f"{approximate!r}; ONNX defines 'none' and 'tanh'")
        op = "GeluTanh" if approximate == "tanh" else "Gelu"
    return {"ctype": CTYPES[y.dtype], "count": y.size, "bound_args": bound_args,
            "statements": activation_statements(op, bounds, y.dtype, "v"),
            "vector_function": VECTOR_MATH.get(op, "") if y.dtype == "float32" else ""}


def clip_bounds(req: KernelRequest) -> tuple[tuple[str, str], list[str]]:
    """Clip's bounds as C expressions: literals when known at compile time (attributes before
    opset 11, constant inputs after), else reads of the run-time scalar inputs, which then
    join the kernel's arguments (their parameter names are returned too)."""
    dtype = req.output().dtype
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    defaults = (-np.inf, np.inf) if dtype.startswith("float") else (info.min, info.max)
    if req.graph.opset < 11:
        return (c_literal(req.node.attrs.get("min", defaults[0]), dtype),
                c_literal(req.node.attrs.get("max", defaults[1]), dtype)), []
    bounds, args = [], []
    for index, default, param in ((1, defaults[0], "low"), (2, defaults[1], "high")):
        tensor = req.input(index)
        if tensor is None:
            bounds.append(c_literal(default, dtype))
        elif tensor.is_constant:
            bounds.append(c_literal(tensor.data.item(), dtype))
        else:
            req.take(tensor)
            args.append(param)
            bounds.append(f"{param}[0]")
    return tuple(bounds), args


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


def transpose_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    perm = req.node.attrs.get("perm") or list(reversed(range(len(x.shape))))
    x_strides = contiguous_strides(x.shape)
    dims, strides = coalesce(list(y.shape), [contiguous_strides(y.shape),
                                             [x_strides[p] for p in perm]])
    loops, (y_index, x_index) = loop_nest(dims, strides)
    req.take(x)
    req.take(y)
    inner = int(np.prod(dims[1:])) if dims else 1
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "x_index": x_index,
            "OUTER_PER_TASK": max(1, -(-TRANSPOSE_ELEMENTS_PER_TASK // max(inner, 1)))}


def softmax_params(req: KernelRequest) -> dict:
    """Before opset 13 Softmax normalises over all axes from `axis` on; since, over one axis."""
    x, y = req.input(0), req.output()
    rank = len(x.shape)
    axis = req.node.attrs.get("axis", 1 if req.graph.opset < 13 else -1)
    axis = axis + rank if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis]))
    if req.graph.opset < 13:
        length, inner = int(np.prod(x.shape[axis:])), 1
    else:
        length, inner = x.shape[axis], int(np.prod(x.shape[axis + 1:]))
    req.take(x)
    req.take(y)
    return {"outer": outer, "length": length, "inner": inner}


# --- reductions and normalisation -------------------------------------------------------------

def reduce_axes(req: KernelRequest) -> list[int]:
    """ReduceMean's axes: the attribute (opset < 18) or the constant second input; none means
    all, unless noop_with_empty_axes."""
    x, node = req.input(0), req.node
    rank = len(x.shape)
    axes_input = req.input(1)
    if axes_input is not None:
        if not axes_input.is_constant:
            raise KernelNotFoundError(f"node {node.name!r}: ReduceMean axes must be constant "
                                      "(the output shape is compiled in)")
        axes = [int(a) for a in axes_input.data.reshape(-1)]
    else:
        axes = list(node.attrs.get("axes", []))
    if not axes:
        return [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a + rank if a < 0 else a for a in axes})


def reduce_mean_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    axes = reduce_axes(req)
    kept = [d for d in range(len(x.shape)) if d not in axes]
    x_strides = contiguous_strides(x.shape)
    y_strides = contiguous_strides(tuple(x.shape[d] for d in kept))
    outer = [{"var": f"o{i}", "extent": x.shape[d]} for i, d in enumerate(kept)]
    inner = [{"var": f"r{i}", "extent": x.shape[d]} for i, d in enumerate(axes)]
    x_terms = [f"o{i} * {x_strides[d]}" for i, d in enumerate(kept)]
    x_terms += [f"r{i} * {x_strides[d]}" for i, d in enumerate(axes)]
    y_terms = [f"o{i} * {y_strides[i]}" for i in range(len(kept))]
    req.take(x)
    req.take(y)
    count = int(np.prod([x.shape[d] for d in axes])) if axes else 1
    return {"ctype": CTYPES[y.dtype], "outer": outer, "inner": inner,
            "x_index": " + ".join(x_terms) or "0", "y_index": " + ".join(y_terms) or "0",
            "count": count}


# Rows of a LayerNormalization task: enough elements (a few microseconds) that handing the
# task to a thread pays, and MiniLM's 128 x 384 rows make 12 tasks, even on 2 or 3 threads.
LAYER_NORM_ELEMENTS_PER_TASK = 4096


def layer_norm_params(req: KernelRequest) -> dict:
    """LayerNormalization (opset 17): normalise over axes axis.. (default -1); the optional
    Mean and InvStdDev outputs (float32, one per row) when the model names them. AddLayerNorm
    (fuse's residual Add + LayerNormalization) takes the two summands first."""
    node = req.node
    residual = node.op == ADD_LAYER_NORM
    first = 2 if residual else 1
    x, scale, bias, y = req.input(0), req.input(first), req.input(first + 1), req.output()
    extras = [req.graph.tensors[name] if name else None
              for name in (list(node.outputs[1:3]) + ["", ""])[:2]]
    for tensor in extras:
        if tensor is not None and tensor.dtype != "float32":
            raise KernelNotFoundError(f"node {node.name!r}: LayerNormalization stash_type "
                                      f"{tensor.dtype}; sparsec computes float32 statistics")
    rank = len(x.shape)
    axis = node.attrs.get("axis", -1)
    axis = axis + rank if axis < 0 else axis
    normalized = tuple(x.shape[axis:])
    length = int(np.prod(normalized))
    rows = x.size // length if length else 0

    def index(tensor):
        strides = broadcast_strides(tensor.shape, normalized)
        digits = contiguous_strides(normalized)
        terms = [f"(j / {d} % {n}) * {s}" for d, n, s in zip(digits, normalized, strides) if s]
        return " + ".join(terms) or "0"

    req.take(x)
    if residual:
        req.take(req.input(1))
    req.take(scale)
    has_bias = req.take(bias)
    req.take(y)
    has_mean, has_inverse = (req.take(tensor) for tensor in extras)
    return {"ctype": CTYPES[y.dtype], "rows": rows, "length": length, "residual": residual,
            "ROWS_PER_TASK": max(1, -(-LAYER_NORM_ELEMENTS_PER_TASK // max(length, 1))),
            "has_mean": has_mean, "has_inverse": has_inverse,
            "epsilon": c_literal(node.attrs.get("epsilon", 1e-5), y.dtype),
            "has_bias": has_bias, "scale_index": index(scale),
            "bias_index": index(bias) if has_bias else "0"}


# --- gather, cast, where -----------------------------------------------------------------------

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


def dynamic_quantize_params(req: KernelRequest) -> dict:
    x = req.input(0)
    req.take(x)
    for index in range(3):
        req.take(req.output(index))
    return {"count": x.size}


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


def where_params(req: KernelRequest) -> dict:
    condition, a, b, y = req.input(0), req.input(1), req.input(2), req.output()
    loops, (y_index, c_index, a_index, b_index) = elementwise_loops(
        y.shape, [condition.shape, a.shape, b.shape])
    for tensor in (condition, a, b, y):
        req.take(tensor)
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "c_index": c_index,
            "a_index": a_index, "b_index": b_index}


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
    if req.graph.opset < 10:
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
