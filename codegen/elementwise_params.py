"""Template parameters for the elementwise kernels (templates/x-elementwise: binary with
broadcast, unary, where), and their operations as C expressions with ONNX semantics."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.activations import VECTOR_MATH, activation_statements
from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.codegen.loops import elementwise_loops
from sparsec.codegen.request import KernelRequest
from sparsec.errors import KernelNotFoundError


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
    if op == "PRelu":  # b: the slope, broadcast to a; NaN fails the comparison
        return f"({a} < 0 ? {a} * {b} : {a})"
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


def where_params(req: KernelRequest) -> dict:
    condition, a, b, y = req.input(0), req.input(1), req.input(2), req.output()
    loops, (y_index, c_index, a_index, b_index) = elementwise_loops(
        y.shape, [condition.shape, a.shape, b.shape])
    for tensor in (condition, a, b, y):
        req.take(tensor)
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "c_index": c_index,
            "a_index": a_index, "b_index": b_index}
