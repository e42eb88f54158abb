"""Sequence-length buckets: one dimension given as a set of lengths, one static plan per length.

Shapes are static in a compiled library, so variable-length text would be padded to the
longest. `--input-shape 'input_ids=1x{32,64,128}'` (Python: `{"input_ids": (1, [32, 64, 128])}`)
asks for one plan per length instead, each the ordinary static compile at that length. Inputs
that share the bucketed dimension's symbolic name (its ONNX `dim_param`, such as
"sequence_length" on attention_mask and token_type_ids) follow it, their other symbolic
dimensions taken from the inputs that were given; the loader pads a request to the smallest
bucket that fits. Nothing here touches the IR: it only turns one request into per-plan
`input_shapes` for the frontend.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import onnx

from sparsec.errors import ShapeError

MAX_BUCKETS = 16
"""Each bucket is a whole compiled plan (code, and weights wherever a plan packs them
differently); more than this is more likely a mistake than a plan."""

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Buckets:
    """Lengths (ascending), each bucketed input's axis, and every pinned input's shape (the
    bucketed ones at any length: `shapes` sets it)."""

    lengths: tuple[int, ...]
    axes: dict[str, int]
    pinned: Shapes

    def shapes(self, length: int) -> Shapes:
        """The static input_shapes of the plan for `length`."""
        shapes = dict(self.pinned)
        for name, axis in self.axes.items():
            shape = shapes[name]
            shapes[name] = shape[:axis] + (length,) + shape[axis + 1:]
        return shapes


def lengths_of(dim, where: str) -> tuple[int, ...] | None:
    """A dimension's bucket lengths (sorted), None for a plain size; errors for a bad set."""
    if not isinstance(dim, (list, tuple, set, frozenset)):
        return None
    values = list(dim)
    if not values:
        raise ShapeError(f"{where}: the set of lengths is empty; give at least two, such as "
                         "{32,64,128}")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ShapeError(f"{where}: bucket lengths must be integers, got {values!r}")
    values = [int(v) for v in values]
    if any(v <= 0 for v in values):
        raise ShapeError(f"{where}: bucket lengths must be positive, got {values!r}")
    if len(set(values)) != len(values):
        raise ShapeError(f"{where}: bucket lengths repeat: {values!r}; give each once")
    if len(values) < 2:
        raise ShapeError(f"{where}: one length is not a set of buckets; pin it as a plain "
                         f"size ({values[0]}) instead")
    if len(values) > MAX_BUCKETS:
        raise ShapeError(f"{where}: {len(values)} bucket lengths, more than {MAX_BUCKETS}: "
                         "each is a whole compiled plan; choose fewer")
    return tuple(sorted(values))


def split(input_shapes: dict) -> tuple[Shapes, dict[str, int], tuple[int, ...] | None]:
    """(plain shapes, bucketed input -> axis, lengths) from a request that may hold a set.
    The same set may appear on several inputs (one dimension each): they are one axis."""
    fixed: Shapes = {}
    axes: dict[str, int] = {}
    lengths = None
    for name, shape in input_shapes.items():
        if not isinstance(shape, (tuple, list)):
            raise ShapeError(f"input shape of {name!r} must be a tuple of sizes, such as "
                             f"(1, 128), got {shape!r}")
        found = [(axis, lengths_of(dim, f"input shape of {name!r}"))
                 for axis, dim in enumerate(shape)]
        sets = [(axis, found_lengths) for axis, found_lengths in found if found_lengths]
        if len(sets) > 1:
            raise ShapeError(f"input shape of {name!r} gives lengths on {len(sets)} "
                             "dimensions; buckets vary one dimension (the sequence)")
        if sets:
            axis, these = sets[0]
            if lengths is not None and these != lengths:
                raise ShapeError(f"inputs give different bucket lengths, {list(lengths)} and "
                                 f"{list(these)} ({name!r}); buckets vary one dimension, so "
                                 "give the same lengths, or give them on one input only")
            lengths, axes[name] = these, axis
            shape = tuple(shape[:axis]) + (these[0],) + tuple(shape[axis + 1:])
        fixed[name] = tuple(shape)
    return fixed, axes, lengths


def expand(model: onnx.ModelProto, input_shapes: dict | None) -> Buckets | None:
    """The request's buckets, with the inputs that follow them; None without a set of lengths."""
    fixed, axes, lengths = split(input_shapes or {})
    if lengths is None:
        return None
    initializers = {t.name for t in model.graph.initializer}
    declared = {v.name: list(v.type.tensor_type.shape.dim) for v in model.graph.input
                if v.name not in initializers}
    bucket_params = {declared[n][a].dim_param for n, a in axes.items()
                     if n in declared and a < len(declared[n]) and declared[n][a].dim_param}
    known: dict[str, int] = {}  # other symbolic dims, from the inputs given
    for name, shape in fixed.items():
        for axis, dim in enumerate(declared.get(name, [])[:len(shape)]):
            if dim.dim_param and dim.dim_param not in bucket_params:
                known.setdefault(dim.dim_param, shape[axis])
            elif dim.dim_param in bucket_params and name not in axes:
                raise ShapeError(
                    f"input shape of {name!r} pins dimension {axis} ({dim.dim_param!r}), which "
                    "the buckets vary; leave it out (it follows the buckets) or give it the "
                    "same lengths")
    for name, dims in declared.items():
        if name in fixed or not any(d.dim_param in bucket_params for d in dims):
            continue
        follows = [axis for axis, d in enumerate(dims) if d.dim_param in bucket_params]
        if len(follows) > 1:
            raise ShapeError(f"input {name!r} has the bucketed dimension on {len(follows)} "
                             "axes; buckets vary one axis per input")
        shape = [lengths[0] if axis == follows[0] else d.dim_value if d.HasField("dim_value")
                 else known.get(d.dim_param) for axis, d in enumerate(dims)]
        if any(size is None for size in shape):
            continue  # left for the frontend, whose error asks for --input-shape
        axes[name] = follows[0]
        fixed[name] = tuple(shape)
    return Buckets(lengths, axes, fixed)


def varying_axes(name: str, shapes: list[tuple[int, ...]], lengths: tuple[int, ...]) -> list[int]:
    """The axes of one tensor's per-plan shapes that equal each plan's length (none for a
    tensor whose shape is the same in every plan, such as an output pooled over the sequence);
    a shape that changes otherwise cannot be cut back to a request's length."""
    ranks = {len(shape) for shape in shapes}
    axes = [axis for axis in range(len(shapes[0])) if len(ranks) == 1
            and all(shape[axis] == length for shape, length in zip(shapes, lengths))]
    others = [[shape[a] for a in range(len(shape)) if a not in axes] for shape in shapes]
    if len(ranks) != 1 or any(other != others[0] for other in others):
        raise ShapeError(f"{name!r} has shapes {', '.join(map(str, shapes))} at bucket lengths "
                         f"{', '.join(map(str, lengths))}: it changes with the length other "
                         "than along axes of that length, so a shorter request's part of it "
                         "cannot be cut out; buckets need every shape to follow the length "
                         "that way (or compile one static shape)")
    return axes


def record(buckets: Buckets, graphs: list) -> dict:
    """The buckets as the model info keeps them: lengths, and each bucketed input's and
    varying output's axes of that length (per plan graph, shortest first)."""
    outputs = {}
    for name in graphs[-1].outputs:
        axes = varying_axes(name, [g.tensors[name].shape for g in graphs], buckets.lengths)
        if axes:
            outputs[name] = axes
    return {"lengths": list(buckets.lengths),
            "inputs": {name: [axis] for name, axis in buckets.axes.items()},
            "outputs": outputs}
