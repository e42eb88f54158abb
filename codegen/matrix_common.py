"""What every matrix kernel's parameters share (fp32, int8 and bf16 Dense, MatMul): the rows
and strides of the activations A, the broadcast of the bias C, and the fused epilogue
Y = act(alpha * A . W + beta * C), as scalar statements and on whole vectors."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.activations import VECTOR_MATH, activation_statements
from sparsec.codegen.c_literals import CTYPES, c_float, c_literal
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import FEATURE_MAJOR, Tensor
from sparsec.errors import KernelNotFoundError


def activation_rows(a: Tensor, trans_a: int) -> tuple[int, int, int, int]:
    """Rows M and depth K of a Dense input, with its element strides: a transposed 2-D A
    (Gemm transA) is K x M, and so is a feature-major one (choose_layouts gives it only to
    kernels whose rows say they read it); otherwise leading dimensions fold into rows."""
    if trans_a:
        k, m = a.shape
        return m, k, 1, m
    k = a.shape[-1]
    if a.layout == FEATURE_MAJOR:
        m = a.size // k if k else 0
        return m, k, 1, m
    m = a.size // k if k else int(np.prod(a.shape[:-1]))
    return m, k, k, 1


def bias_params(req: KernelRequest, rows: int, cols: int) -> dict:
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


def epilogue_params(req: KernelRequest, attrs: dict, dtype: str) -> dict:
    ctype = CTYPES[dtype]
    return {"alpha": c_float(attrs.get("alpha", 1.0), ctype),
            "scale_by_alpha": float(attrs.get("alpha", 1.0)) != 1.0,
            "beta": c_float(attrs.get("beta", 1.0), ctype),
            "activation": activation_statements(
                attrs.get("activation", ""),
                tuple(c_literal(b, dtype) for b in attrs.get("activation_params", ())), dtype,
                "v")}


def vector_epilogue_params(attrs: dict, dtype: str = "float32") -> dict:
    """The fused activation on whole vectors in SIMD epilogues: Relu and Clip as min/max, the
    others through runtime_c/sparsec_vmath.h, whose functions return what the scalar
    statements (`activation`, for tails and portable C) return, bit for bit."""
    activation = attrs.get("activation", "")
    if activation == "Relu":
        return {"vector_activation": "relu"}
    if activation == "Clip":
        low, high = (c_literal(b, dtype) for b in attrs["activation_params"])
        return {"vector_activation": "clip", "low": low, "high": high}
    if activation and activation not in VECTOR_MATH:
        raise KernelNotFoundError(f"no vector form of the fused activation {activation!r}")
    return {"vector_activation": VECTOR_MATH.get(activation, "")}
