"""Template parameters for the normalisations and reductions: Softmax (templates/f32-softmax),
ReduceMean (x-reduce) and LayerNormalization, plain or fused with a residual Add
(f32-layernorm)."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.codegen.loops import broadcast_strides, contiguous_strides
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ops import ADD_LAYER_NORM
from sparsec.errors import KernelNotFoundError


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
