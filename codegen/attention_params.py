"""Template parameters for fused attention (templates/f32-attention): softmax(Q . K^T
(scaled, masked)) . V per batch and head, on Q, V and the output read and written in place
where fuse folded the head Transposes in."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import c_float
from sparsec.codegen.loops import broadcast_strides, contiguous_strides
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import Tensor
from sparsec.errors import KernelNotFoundError


def _permuted_view(tensor: Tensor, perm) -> tuple[tuple[int, ...], list[int]]:
    """Shape and element strides of transpose(tensor, perm), read in place."""
    strides = contiguous_strides(tensor.shape)
    if perm is None:
        return tensor.shape, strides
    return tuple(tensor.shape[p] for p in perm), [strides[p] for p in perm]


def _written_view(tensor: Tensor, perm) -> tuple[tuple[int, ...], list[int]]:
    """Shape and strides of the result R whose transpose(R, perm) is `tensor`."""
    strides = contiguous_strides(tensor.shape)
    if perm is None:
        return tensor.shape, strides
    inverse = np.argsort(perm)
    return tuple(tensor.shape[i] for i in inverse), [strides[i] for i in inverse]


def _batch_offset(position: tuple[int, ...], strides: list[int]) -> int:
    return sum(i * s for i, s in zip(position, strides))


def _attention_blocks(vectors: int, registers: int) -> tuple[int, int, int, int]:
    """Query rows a task (6 or 8: their scores stay in L1 between the two products) and the
    register blocks of the two products, for D = `vectors` vectors and `registers` vector
    registers. A block of d rows x w vectors holds d*w accumulators, w loaded vectors (B's keys,
    V's columns) and a broadcast, all in registers: on AVX2 a context block of 3 x 4 needed 17
    of the 16 and reloaded a V vector for every row (6 x 2, 15 registers, ran the context 4-8 %
    faster at head sizes 32 and 64). Scores take blocks of rows x 2 vectors of keys; the
    context the block that loads fewest vectors per FMA, (d + w) / (d w), with w of 1, 2 or 4
    dividing D. Row blocks divide the task's rows, so every block is whole (rows past M repeat
    the last row). The task's rows are those whose smaller block holds the most accumulators:
    6 on AVX2 (16 registers), 8 on AVX-512 (32)."""
    widths = [w for w in (1, 2, 4) if vectors % w == 0] if vectors else [1]

    def fits(rows: int, width: int) -> bool:
        return rows * width + width + 1 <= registers

    def blocks(rows: int) -> tuple[int, int, int]:
        divisors = [d for d in range(1, rows + 1) if rows % d == 0]
        scores = max(d for d in divisors if fits(d, 2) or d == 1)
        context = [(d, w) for d in divisors for w in widths if fits(d, w) or d == 1]
        rows_c, width = min(context, key=lambda b: ((b[0] + b[1]) / (b[0] * b[1]), -b[0] * b[1]))
        return scores, rows_c, width

    def accumulators(rows: int) -> int:
        scores, context_rows, width = blocks(rows)
        return min(2 * scores, context_rows * width)

    rows = max((8, 6), key=accumulators)  # ties keep 8
    return (rows, *blocks(rows))


def attention_params(req: KernelRequest, vector: int, registers: int) -> dict:
    """Fused attention on `vector`-float vectors, register blocks within the ISA's `registers`
    vector registers.
    Q, V and the output may be transposed views (fuse folded the head Transposes in)."""
    attrs = req.node.attrs
    a_shape, a_strides = _permuted_view(req.input(0), attrs.get("a_perm"))
    b_shape, b_strides = _permuted_view(req.input(1), None)
    v_shape, v_strides = _permuted_view(req.input(2), attrs.get("v_perm"))
    y_shape, y_strides = _written_view(req.output(), attrs.get("y_perm"))
    mask = req.input(3)
    m, k, n, d = a_shape[-2], a_shape[-1], b_shape[-1], v_shape[-1]
    if b_strides[-1] != 1 or v_strides[-1] != 1 or y_strides[-1] != 1:
        raise KernelNotFoundError(f"node {req.node.name!r}: attention needs K^T, V and the "
                                  "output contiguous along their last axis")
    batch_shape = a_shape[:-2]
    mask_shape = (1,) * (len(y_shape) - len(mask.shape)) + mask.shape if mask else None
    mask_batch = broadcast_strides(mask_shape[:-2], batch_shape) if mask else ()
    mask_rows, mask_cols = (mask_shape[-2], mask_shape[-1]) if mask else (1, 1)
    offsets = [(_batch_offset(position, a_strides), _batch_offset(position, b_strides),
                _batch_offset(position, v_strides),
                _batch_offset(position, mask_batch) * mask_rows * mask_cols if mask else 0,
                _batch_offset(position, y_strides))
               for position in np.ndindex(*batch_shape)]
    for tensor in (req.input(0), req.input(1), req.input(2), mask):
        req.take(tensor)
    req.take(req.output())
    scale = c_float(attrs.get("scale", 1.0))
    rows, scores_rows, context_rows, context_vectors = _attention_blocks(d // vector, registers)
    return {"VL": vector, "MR": rows, "RS": scores_rows, "RC": context_rows,
            "CW": context_vectors, "M": m, "K": k, "N": n,
            "D": d, "offsets": offsets, "a_sm": a_strides[-2], "a_sk": a_strides[-1],
            "b_sk": b_strides[-2], "v_sn": v_strides[-2], "y_sm": y_strides[-2],
            "has_mask": mask is not None, "nan_to_zero": bool(attrs.get("nan_to_zero")),
            "mask_sm": mask_cols if mask_rows > 1 else 0, "mask_sn": 1 if mask_cols > 1 else 0,
            "scale": {"Mul": f"t * {scale}", "Div": f"t / {scale}", "": ""}[
                attrs.get("scale_op", "")]}
