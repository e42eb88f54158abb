"""numpy references for sparsec's dynamic int8 quantization, written from the ONNX definitions
(DynamicQuantizeLinear, MatMulInteger) independently of the compiler's code.

They are the oracle of every int8 test: integer sums exact on any host. onnxruntime's own int8
is exact only on some CPUs (tests/conftest.py, `onnxruntime_int8_exact`), so it is compared
besides this reference where it is, never instead of it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

F32 = np.float32


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, F32, int]:
    """DynamicQuantizeLinear: u8 codes, scale, zero point (all-zero input: scale 1, as ORT)."""
    low, high = min(F32(np.min(x, initial=0)), F32(0)), max(F32(np.max(x, initial=0)), F32(0))
    scale = F32(1) if high == low else F32((high - low) / F32(255))
    zero_point = int(np.rint(np.clip(F32(0) - low / scale, 0, 255)))
    codes = np.clip(np.rint(x.astype(F32) / scale) + zero_point, 0, 255).astype(np.uint8)
    return codes, scale, zero_point


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per output column: codes in [-127, 127], scale = the smallest float32 not
    below max|w| / 127 (so no code passes 127, subnormal columns included); 1 for a zero
    column."""
    absmax = np.max(np.abs(w), axis=0, initial=0).astype(F32)
    wanted = absmax.astype(np.float64) / 127
    scale = np.array([F32(s) if F32(s) >= s else np.nextafter(F32(s), F32(np.inf))
                      for s in wanted], dtype=F32).reshape(absmax.shape)
    scale[absmax == 0] = 1
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def dense_int8(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """float32(sum (xq - zp) wq) * (sx * sw) [+ bias], each step in float32 as onnxruntime
    computes Cast -> Mul -> Add; the integer sum is exact."""
    codes, scale, zero_point = quantize_activations(x)
    wq, wscale = quantize_weights(w)
    acc = (codes.astype(np.int64) - zero_point) @ wq.astype(np.int64)
    assert np.all(np.abs(acc) < 2**31), "the kernels accumulate in int32"
    y = acc.astype(np.int32).astype(F32) * (scale * wscale).astype(F32)
    return y if bias is None else (y + bias.astype(F32)).astype(F32)


def matmul_integer(a: np.ndarray, b: np.ndarray, a_zero_point=None,
                   b_zero_point=None) -> np.ndarray:
    """MatMulInteger: (a - a_zero_point) @ (b - b_zero_point), summed exactly; the zero points
    are scalars, or per row of `a` (1-D, M) and per column of `b` (1-D, N)."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    if a_zero_point is not None:
        a_zero = np.asarray(a_zero_point, np.int64)
        a = a - (a_zero.reshape(-1, 1) if a_zero.ndim == 1 and a_zero.size > 1 else a_zero)
    if b_zero_point is not None:
        b = b - np.asarray(b_zero_point, np.int64)
    acc = a @ b
    assert np.all(np.abs(acc) < 2**31), "MatMulInteger's output is int32"
    return acc.astype(np.int32)


class DynamicQuantizeLinear(OpRun):
    """The evaluator's DynamicQuantizeLinear replaced by quantize_activations above."""
    op_domain = ""

    def _run(self, x):
        codes, scale, zero_point = quantize_activations(x)
        return codes, np.array(scale, np.float32), np.array(zero_point, np.uint8)


class MatMulInteger(OpRun):
    """The evaluator's MatMulInteger replaced by matmul_integer above (int64 sums, checked)."""
    op_domain = ""

    def _run(self, a, b, a_zero_point=None, b_zero_point=None):
        return (matmul_integer(a, b, a_zero_point, b_zero_point),)


class DequantizeLinear(OpRun):
    """(x - zero_point) * scale, one float32 rounding, per tensor or along `axis`: here because
    the evaluator has no DequantizeLinear before opset 19 (quantize_dynamic writes it, opset 17,
    for quantized Gather tables)."""
    op_domain = ""

    def _run(self, x, scale, zero_point=None, axis=None, block_size=None, output_dtype=None):
        assert not block_size and not output_dtype, "opset 21's blocks and output types"
        scale = np.asarray(scale, np.float32)
        zero_point = np.zeros((), np.int32) if zero_point is None else zero_point.astype(np.int32)
        if scale.ndim == 1:  # per slice along axis (with a zero point per slice, or none)
            shape = [1] * x.ndim
            shape[1 if axis is None else axis] = scale.size
            scale = scale.reshape(shape)
            zero_point = zero_point.reshape(shape) if zero_point.ndim == 1 else zero_point
        shifted = x.astype(np.int32) - zero_point
        return ((shifted.astype(np.float32) * scale).astype(np.float32),)


def run_exact(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """A quantized ONNX graph (DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add, as
    quantize_dynamic writes it or tests/models/test_quantized_models.py builds it) evaluated by
    onnx's reference evaluator with its integer operators computed here: exact integer sums on
    any CPU, then the same float32 operations, one rounding each, that onnxruntime performs.
    Other float ops (a whole encoder's LayerNorm, Softmax, Erf) are the evaluator's own numpy
    code."""
    evaluator = ReferenceEvaluator(model, new_ops=[DynamicQuantizeLinear, MatMulInteger,
                                                   DequantizeLinear])
    return evaluator.run(None, feeds)
