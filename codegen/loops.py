"""Loop nests over broadcast shapes, as the templates print them: per loop a counter and its
extent, per operand the C index expression in those counters. Python computes every stride
and offset; templates only print them."""

from __future__ import annotations


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
