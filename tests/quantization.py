"""numpy references for sparsec's dynamic int8 quantization, written from the ONNX definitions
(DynamicQuantizeLinear, MatMulInteger) independently of the compiler's code."""

from __future__ import annotations

import numpy as np

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
