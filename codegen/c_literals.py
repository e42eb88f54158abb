"""C spellings of the IR's element types and of constant values.

Every number that reaches generated C is printed here (`c_float`, `c_int`, `c_literal`), and
every identifier is a fixed string, so nothing from the model can reach the generated code.
"""

from __future__ import annotations

import numpy as np

CTYPES = {"float32": "float", "float64": "double", "int8": "int8_t", "int16": "int16_t",
          "int32": "int32_t", "int64": "int64_t", "uint8": "uint8_t", "uint16": "uint16_t",
          "uint32": "uint32_t", "uint64": "uint64_t", "bool": "uint8_t",
          "float16": "uint16_t"}  # IEEE binary16 bits: graph inputs/outputs and their Casts


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
