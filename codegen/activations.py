"""Activations as C statements: standalone (the x-elementwise unary kernel) and fused into the
matrix kernels' epilogues, where tails and portable C run these scalar statements."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.errors import KernelNotFoundError

# Float activations computed inline and branch-free instead of libm calls (a call per element,
# which no loop vectorises): runtime_c/sparsec_vmath_body.h defines each once, as
# sparsec_vN_NAME for N lanes; N = 1 is the scalar instance, and every vector lane returns its
# bits.
VECTOR_MATH = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu", "GeluTanh": "gelu_tanh",
               "Erf": "erf", "Exp": "exp"}


def activation_statements(op: str, bounds: tuple[str, ...], dtype: str,
                          var: str = "x") -> list[str]:
    """C statements that apply an activation to `var` in place (NaN propagates as in ORT).
    `bounds`: Clip's (min, max) as C expressions, literals or reads of run-time scalars."""
    ctype = CTYPES[dtype]
    zero = c_literal(0, dtype)
    one = c_literal(1, dtype)
    if op == "":
        return []
    if op in VECTOR_MATH and ctype == "float":
        return [f"{var} = sparsec_v1_{VECTOR_MATH[op]}({var});"]
    if op == "Relu":
        return [f"{var} = {var} < {zero} ? {zero} : {var};"]
    if op == "Sigmoid":
        return [f"{var} = {one} / ({one} + exp(-{var}));"]
    if op == "Clip":
        low, high = bounds
        # max then min: with min > max every value becomes max, as ONNX specifies.
        return [f"{var} = {var} < {low} ? {low} : {var};",
                f"{var} = {var} > {high} ? {high} : {var};"]
    if op == "Sqrt":
        return [f"{var} = sqrt{'f' if ctype == 'float' else ''}({var});"]
    if op in ("Tanh", "Erf", "Exp"):  # double
        return [f"{var} = {op.lower()}({var});"]
    if op == "Not":  # bool is a 0/1 byte
        return [f"{var} = ({ctype})!{var};"]
    if op == "Neg":
        if dtype.startswith("float"):
            return [f"{var} = -{var};"]
        wide = "uint64_t" if dtype.endswith("64") else "uint32_t"  # INT_MIN wraps, no UB
        return [f"{var} = ({ctype})(({wide})0 - ({wide}){var});"]
    if op == "Gelu":  # approximate="none": x/2 (1 + erf(x / sqrt 2))
        half, root_half = c_literal(0.5, dtype), c_literal(np.sqrt(0.5), dtype)
        return [f"{var} = {half} * {var} * ({one} + erf({var} * {root_half}));"]
    if op == "GeluTanh":  # approximate="tanh": x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        half, scale = c_literal(0.5, dtype), c_literal(np.sqrt(2 / np.pi), dtype)
        cubic = c_literal(0.044715, dtype)
        return [f"{var} = {half} * {var} * ({one} + tanh({scale} * ({var} + {cubic} * "
                f"{var} * {var} * {var})));"]
    raise KernelNotFoundError(f"no activation {op!r}")
