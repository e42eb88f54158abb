"""Template parameters for each kernel family, computed per node at compile time.

Python computes every shape, stride, offset and index expression; templates only print them.
Every number that reaches C is an int or a float printed by `c_float`/`c_int` here, and every
identifier is a fixed string, so nothing from the model can reach the generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsec.codegen.cnames import c_string_literal
from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.errors import KernelNotFoundError

CTYPES = {"float32": "float", "float64": "double", "int8": "int8_t", "int16": "int16_t",
          "int32": "int32_t", "int64": "int64_t", "uint8": "uint8_t", "uint16": "uint16_t",
          "uint32": "uint32_t", "uint64": "uint64_t", "bool": "uint8_t"}


class WeightSink:
    """Where params functions put packed constants; `add` returns the byte offset."""

    def add(self, array: np.ndarray) -> int:  # pragma: no cover - see emit.WeightBlob
        raise NotImplementedError


@dataclass
class KernelRequest:
    """One node's view for a params function: the graph, the node, and the weight blob.

    `args` collects the tensors the kernel function takes, in parameter order; `checked` marks
    a kernel that validates run-time values and returns non-zero with a message on failure.
    """

    graph: Graph
    node: Node
    blob: WeightSink
    args: list[str] = field(default_factory=list)
    checked: bool = False

    def input(self, index: int) -> Tensor | None:
        names = self.node.inputs
        return self.graph.tensors[names[index]] if index < len(names) and names[index] else None

    def output(self, index: int = 0) -> Tensor:
        return self.graph.tensors[self.node.outputs[index]]

    def take(self, tensor: Tensor | None) -> bool:
        if tensor is None:
            return False
        self.args.append(tensor.name)
        return True


# --- literals ---------------------------------------------------------------------------------

def c_float(value: float, ctype: str = "float") -> str:
    """Exact C literal (hexadecimal float) for a float32 or float64 value."""
    value = float(np.float32(value)) if ctype == "float" else float(value)
    if np.isnan(value):
        return "NAN"
    if np.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"{value.hex()}{'f' if ctype == 'float' else ''}"


def c_int(value: int, dtype: str) -> str:
    value = int(value)
    if dtype == "int64" and value == np.iinfo(np.int64).min:
        return "(-9223372036854775807LL - 1)"
    if dtype == "int32" and value == np.iinfo(np.int32).min:
        return "(-2147483647 - 1)"
    suffix = {"int64": "LL", "uint64": "ULL", "uint32": "U"}.get(dtype, "")
    return f"{value}{suffix}"


def c_literal(value, dtype: str) -> str:
    if dtype in ("float32", "float64"):
        return c_float(value, CTYPES[dtype])
    return c_int(value, dtype)


# --- loops over broadcast shapes ---------------------------------------------------------------

def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return strides[::-1]


def broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of `shape` indexed by `out_shape` coordinates (0 along broadcast axes)."""
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides = contiguous_strides(padded)
    return [0 if d == 1 else s for d, s in zip(padded, strides)]


def coalesce(dims: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge neighbouring axes that every operand walks as one: fewer, longer loops."""
    out_dims: list[int] = []
    out_strides: list[list[int]] = [[] for _ in strides]
    for axis, dim in enumerate(dims):
        if dim == 1:
            continue
        if out_dims and all(s[-1] == st[axis] * dim for s, st in zip(out_strides, strides)):
            out_dims[-1] *= dim
            for s, st in zip(out_strides, strides):
                s[-1] = st[axis]
            continue
        out_dims.append(dim)
        for s, st in zip(out_strides, strides):
            s.append(st[axis])
    return out_dims, out_strides


def loop_nest(dims: list[int], strides: list[list[int]]) -> tuple[list[dict], list[str]]:
    """Loops `i0..` over `dims`, and per operand the C index expression in those counters."""
    loops = [{"var": f"i{axis}", "extent": dim} for axis, dim in enumerate(dims)]
    indices = []
    for operand in strides:
        terms = [f"i{axis}" if s == 1 else f"i{axis} * {s}"
                 for axis, s in enumerate(operand) if s]
        indices.append(" + ".join(terms) or "0")
    return loops, indices


def elementwise_loops(out_shape, operand_shapes) -> tuple[list[dict], list[str]]:
    dims = list(out_shape)
    strides = [contiguous_strides(tuple(out_shape))]
    strides += [broadcast_strides(tuple(s), tuple(out_shape)) for s in operand_shapes]
    dims, strides = coalesce(dims, strides)
    return loop_nest(dims, strides)


# --- activations and arithmetic as C statements ---------------------------------------------

def activation_statements(op: str, bounds: tuple[str, ...], dtype: str,
                          var: str = "x") -> list[str]:
    """C statements that apply an activation to `var` in place (NaN propagates as in ORT).
    `bounds`: Clip's (min, max) as C expressions, literals or reads of run-time scalars."""
    ctype = CTYPES[dtype]
    zero = c_literal(0, dtype)
    one = c_literal(1, dtype)
    suffix = "f" if ctype == "float" else ""
    if op == "":
        return []
    if op == "Relu":
        return [f"{var} = {var} < {zero} ? {zero} : {var};"]
    if op == "Sigmoid":
        return [f"{var} = {one} / ({one} + exp{suffix}(-{var}));"]
    if op == "Tanh":
        return [f"{var} = tanh{suffix}({var});"]
    if op == "Clip":
        low, high = bounds
        # max then min: with min > max every value becomes max, as ONNX specifies.
        return [f"{var} = {var} < {low} ? {low} : {var};",
                f"{var} = {var} > {high} ? {high} : {var};"]
    raise KernelNotFoundError(f"no activation {op!r}")


def binary_expression(op: str, dtype: str, a: str, b: str) -> str:
    """`a OP b` with ONNX semantics; integers wrap (unsigned arithmetic, never C's UB) and
    integer division by zero gives 0 instead of trapping."""
    symbol = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}[op]
    ctype = CTYPES[dtype]
    if dtype in ("float32", "float64"):
        return f"{a} {symbol} {b}"
    wide = "uint64_t" if dtype.endswith("64") else "uint32_t"
    if op != "Div":
        return f"({ctype})(({wide}){a} {symbol} ({wide}){b})"
    if dtype.startswith("u"):
        return f"({b} == 0 ? ({ctype})0 : ({ctype})({a} / {b}))"
    return (f"({b} == 0 ? ({ctype})0 : {b} == -1 ? ({ctype})(({wide})0 - ({wide}){a})"
            f" : ({ctype})({a} / {b}))")


# --- matrix products --------------------------------------------------------------------------

def _bias(req: KernelRequest, rows: int, cols: int) -> dict:
    """Per-element bias strides for C broadcast to rows x cols (Gemm semantics)."""
    bias = req.input(2)
    if not req.take(bias):
        return {"has_bias": False}
    shape = (1, 1) + tuple(bias.shape)
    bias_rows, bias_cols = shape[-2], shape[-1]
    if (bias.size != bias_rows * bias_cols or bias_rows not in (1, rows)
            or bias_cols not in (1, cols)):
        raise KernelNotFoundError(f"node {req.node.name!r}: bias of shape {bias.shape} does not "
                                  f"broadcast to {rows}x{cols}")
    return {"has_bias": True, "bias_sm": bias_cols if bias_rows > 1 else 0,
            "bias_sn": 1 if bias_cols > 1 else 0}


def _epilogue(req: KernelRequest, attrs: dict, dtype: str) -> dict:
    ctype = CTYPES[dtype]
    return {"alpha": c_float(attrs.get("alpha", 1.0), ctype),
            "scale_by_alpha": float(attrs.get("alpha", 1.0)) != 1.0,
            "beta": c_float(attrs.get("beta", 1.0), ctype),
            "activation": activation_statements(
                attrs.get("activation", ""),
                tuple(c_literal(b, dtype) for b in attrs.get("activation_params", ())), dtype,
                "v")}


def _gemm_tile(req: KernelRequest) -> dict:
    """4 rows x 32 columns of accumulators: 8 independent AVX-512 FMA chains (enough to hide
    FMA latency on two pipes), 16 AVX2 registers; SSE spills some, still the fastest measured
    (benchmarks/kernels.py: 16 columns ran 2.4x slower with AVX-512)."""
    return {"MR": 4, "NT": 32}


def _activation_rows(a: Tensor, trans_a: int) -> tuple[int, int, int, int]:
    """Rows M and depth K of a Dense input, with its element strides: a transposed 2-D A
    (Gemm transA) is K x M; otherwise leading dimensions fold into rows."""
    if trans_a:
        k, m = a.shape
        return m, k, 1, m
    k = a.shape[-1]
    m = a.size // k if k else int(np.prod(a.shape[:-1]))
    return m, k, k, 1


def dense_params(req: KernelRequest) -> dict:
    """Dense node, dense weight: Y = act(alpha * op(A) . op(B) + beta * C)."""
    node, a, b = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    trans_b = node.attrs.get("trans_b", 0)
    n = b.shape[0] if trans_b else b.shape[1]
    b_sk, b_sn = (1, k) if trans_b else (n, 1)
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk,
              "b_sk": b_sk, "b_sn": b_sn, "batches": [], **_gemm_tile(req), **_bias(req, m, n),
              **_epilogue(req, node.attrs, a.dtype)}
    req.take(req.output())
    return params


def gemm_panels_params(req: KernelRequest, mr: int, panel: int) -> dict:
    """Dense node with a constant dense weight for SIMD kernels: B re-laid at compile time as
    [N / panel][K][panel] so each k step loads one contiguous panel row."""
    node, a, weight = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    panels = -(-n // panel)
    padded = np.zeros((k, panels * panel), np.float32)
    padded[:, :n] = weight.data
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "MR": mr, "panels": panels,
        "n_tail": n - (panels - 1) * panel,
        "packed": req.blob.add(padded.reshape(k, panels, panel).transpose(1, 0, 2)),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    req.take(req.output())
    return params


def matmul_params(req: KernelRequest) -> dict:
    """numpy.matmul: 1-D operands promoted, batch dimensions broadcast."""
    a, b, y = req.input(0), req.input(1), req.output()
    a_shape = (1,) + a.shape if len(a.shape) == 1 else a.shape
    b_shape = b.shape + (1,) if len(b.shape) == 1 else b.shape
    m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
    batch_shape = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    a_batch = broadcast_strides(a_shape[:-2], batch_shape)
    b_batch = broadcast_strides(b_shape[:-2], batch_shape)
    batches = []
    for index in np.ndindex(*batch_shape):
        batches.append((sum(i * s for i, s in zip(index, a_batch)) * m * k,
                        sum(i * s for i, s in zip(index, b_batch)) * k * n,
                        len(batches) * m * n))
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": k, "a_sk": 1,
              "b_sk": n, "b_sn": 1, "batches": batches if len(batches) > 1 else [],
              **_gemm_tile(req),
              "has_bias": False, **_epilogue(req, {}, a.dtype)}
    req.take(y)
    return params


def spmm_params(req: KernelRequest) -> dict:
    """Dense node with a block-sparse weight: the pattern's tables go into the weight blob."""
    node, a = req.node, req.input(0)
    packed = req.input(1).sparsity.packed
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = req.input(1).shape[1]
    rows, cols = packed.rows, packed.cols
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "R": rows, "C": cols, "a_sm": a_sm, "a_sk": a_sk,
        "KB": -(-k // rows), "NB": -(-n // cols), "k_tail": k - (-(-k // rows) - 1) * rows,
        "n_tail": n - (-(-n // cols) - 1) * cols, "MR": 4, "num_blocks": packed.num_blocks,
        "row_ptr": req.blob.add(packed.row_ptr), "col_idx": req.blob.add(packed.col_idx),
        "values": req.blob.add(packed.values),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
    }
    req.take(req.output())
    return params


def column_blocks(packed, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-CSR by block rows -> by block columns: col_ptr, row index per block, values.

    SIMD kernels that vectorise over a block's outputs walk one column block at a time, so
    that its accumulators stay in registers."""
    block_rows = np.repeat(np.arange(packed.row_ptr.size - 1), np.diff(packed.row_ptr))
    order = np.lexsort((block_rows, packed.col_idx))
    col_ptr = np.zeros(columns + 1, dtype=np.int32)
    np.cumsum(np.bincount(packed.col_idx, minlength=columns), out=col_ptr[1:])
    return col_ptr, block_rows[order].astype(np.int32), packed.values[order]


def spmm_tokens_params(req: KernelRequest, tokens: int) -> dict:
    """Rx1-block weight for SIMD kernels that vectorise over tokens: per-output-column CSR
    (block row index and R values per block); the kernel transposes A tiles in scratch."""
    node, a, weight = req.node, req.input(0), req.input(1)
    packed = weight.sparsity.packed
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    col_ptr, k_idx, values = column_blocks(packed, n)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "R": packed.rows, "KB": packed.row_ptr.size - 1, "T": tokens,
        "a_sm": a_sm, "a_sk": a_sk, "num_blocks": packed.num_blocks,
        "col_ptr": req.blob.add(col_ptr), "k_idx": req.blob.add(k_idx),
        "values": req.blob.add(values), **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    req.take(req.output())
    return params


def spmm_tokens_scratch(graph: Graph, node: Node, tokens: int) -> int:
    """Bytes for the transposed A tile (block rows padded) and the transposed Y tile."""
    weight = graph.tensors[node.inputs[1]]
    k, n = weight.shape
    rows = weight.sparsity.packed.rows
    return 4 * tokens * (-(-k // rows) * rows + n)


def _vector_epilogue(attrs: dict, dtype: str = "float32") -> dict:
    """Relu and Clip as vector min/max in SIMD epilogues; the others (`after_store`) as scalar
    statements over the stored values. `activation` keeps the full scalar form for tails."""
    activation = attrs.get("activation", "")
    if activation == "Relu":
        return {"vector_activation": "relu", "after_store": []}
    if activation == "Clip":
        low, high = (c_literal(b, dtype) for b in attrs["activation_params"])
        return {"vector_activation": "clip", "low": low, "high": high, "after_store": []}
    return {"vector_activation": "",
            "after_store": activation_statements(activation, (), dtype, "v")}


def spmm_columns_params(req: KernelRequest, mr: int) -> dict:
    """1xC-block weight for SIMD kernels that vectorise over a block's C outputs: column-block
    CSR tables, MR rows of A per register tile."""
    node, a, weight = req.node, req.input(0), req.input(1)
    packed = weight.sparsity.packed
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    blocks = -(-n // packed.cols)
    col_ptr, k_idx, values = column_blocks(packed, blocks)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "NB": blocks, "MR": mr,
        "n_tail": n - (blocks - 1) * packed.cols, "num_blocks": packed.num_blocks,
        "col_ptr": req.blob.add(col_ptr), "k_idx": req.blob.add(k_idx),
        "values": req.blob.add(values),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    req.take(req.output())
    return params


# --- elementwise, data movement, softmax -----------------------------------------------------

def binary_params(req: KernelRequest) -> dict:
    a, b, y = req.input(0), req.input(1), req.output()
    loops, (y_index, a_index, b_index) = elementwise_loops(y.shape, [a.shape, b.shape])
    for tensor in (a, b, y):
        req.take(tensor)
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index,
            "expression": binary_expression(req.node.op, y.dtype, f"a[{a_index}]",
                                            f"b[{b_index}]")}


def unary_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    req.take(x)
    bounds, bound_args = clip_bounds(req) if req.node.op == "Clip" else ((), [])
    req.take(y)
    return {"ctype": CTYPES[y.dtype], "count": y.size, "bound_args": bound_args,
            "statements": activation_statements(req.node.op, bounds, y.dtype, "v")}


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
    shape = req.input(1) if req.node.op == "Reshape" else None
    req.take(x)
    req.checked = shape is not None and not shape.is_constant
    if req.checked:
        req.take(shape)
    req.take(y)
    return {"nbytes": y.nbytes, "check_shape": req.checked, "input_dims": list(x.shape),
            "output_dims": list(y.shape), "output_text": str(list(y.shape)),
            "allowzero": int(req.node.attrs.get("allowzero", 0)),
            "node_literal": c_string_literal(req.node.name)}


def transpose_params(req: KernelRequest) -> dict:
    x, y = req.input(0), req.output()
    perm = req.node.attrs.get("perm") or list(reversed(range(len(x.shape))))
    x_strides = contiguous_strides(x.shape)
    dims, strides = coalesce(list(y.shape), [contiguous_strides(y.shape),
                                             [x_strides[p] for p in perm]])
    loops, (y_index, x_index) = loop_nest(dims, strides)
    req.take(x)
    req.take(y)
    return {"ctype": CTYPES[y.dtype], "loops": loops, "y_index": y_index, "x_index": x_index}


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
