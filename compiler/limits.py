"""Memory limits: a hostile or mistaken model must not make sparsec (or the library it builds)
allocate without bound.

Every size is checked before the bytes exist: declared tensor shapes on import, the result of a
constant node before it is evaluated, and the arena plus weights after memory planning. One
budget, `max_memory`, bounds all of them; the default suits the encoders, MLPs and CNNs sparsec
targets, and `--max-memory` raises it.

Constant folding (the frontend's shape folding and the fold-constants pass) goes through a
`FoldBudget`: a node's results are sized from its inputs' values by `fold_sizes`' own rules
(every op whose result size depends on values, and those that multiply sizes), or by ONNX shape
inference on that one node where no rule applies, and refused, naming node, op and size, before
evaluation; the constants held (weights plus everything folded) are a running total against the
same budget. Control flow is never folded: what it allocates is unknown until it has run. Where
the process runs out of memory anyway (`ulimit -v` below the budget), the MemoryError becomes a
`ResourceLimitError`, one line from the CLI.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from sparsec.compiler import fold_sizes
from sparsec.errors import ResourceLimitError

DEFAULT_MAX_MEMORY = 4 << 30
"""4 GiB: a BERT-large in fp32 (1.3 GB of weights) with its arena at sequence 512 fits twice."""

HARD_TENSOR_LIMIT = 1 << 36
"""64 GiB per tensor whatever --max-memory says: far below sizes whose byte offsets overflow
the generated kernels' arithmetic."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`"8G"`, `"512M"`, `"1.5G"`, `"123456"` -> bytes (binary units; a trailing B or iB is
    allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not match:
        raise ResourceLimitError(f"bad memory size {text!r}: expected a number of bytes with an "
                                 "optional K, M, G or T suffix, such as 8G")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise ResourceLimitError(f"the memory limit must be positive, got {text!r}")
    return size


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0]]
        if size >= scale:
            return f"{size / scale:.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


def _advice(limit: int) -> str:
    return (f"sparsec's memory limit is {format_size(limit)}; if the model really needs this, "
            "raise it with --max-memory (Python: max_memory=)")


def check_bytes(size: int, what: str, limit: int) -> None:
    """Refuse `size` bytes of `what` over the budget or the per-tensor ceiling."""
    if size > HARD_TENSOR_LIMIT:
        raise ResourceLimitError(f"{what} would take {format_size(size)}, more than sparsec "
                                 f"can address in one tensor ({format_size(HARD_TENSOR_LIMIT)}); "
                                 "check the model's shapes")
    if size > limit:
        raise ResourceLimitError(f"{what} would take {format_size(size)}. {_advice(limit)}")


def shape_bytes(shape, itemsize: int) -> int:
    """Bytes of a tensor of `shape`, in Python integers (numpy's int64 product can wrap)."""
    size = itemsize
    for dim in shape:
        size *= int(dim)
    return size


def check_total(weights: int, arena: int, limit: int) -> None:
    if weights + arena > limit:
        raise ResourceLimitError(
            f"the compiled model would need {format_size(weights + arena)} of memory "
            f"(weights {format_size(weights)}, activation arena {format_size(arena)}). "
            f"{_advice(limit)}")


OUT_OF_MEMORY = ("ran out of memory while compiling: the process's memory limit "
                 "(ulimit -v) or the machine's memory is below what this model needs. Set "
                 "--max-memory (Python: max_memory=) under the memory available, and sparsec "
                 "refuses such models before allocating, naming the tensor")


def out_of_memory_is_refusal(function):
    """`function`, with a MemoryError from anywhere inside it raised as a ResourceLimitError.
    The new error is raised after the except block, so that the MemoryError's frames, and the
    arrays they hold, are freed before anyone handles it."""
    @functools.wraps(function)
    def guarded(*args, **keywords):
        try:
            return function(*args, **keywords)
        except MemoryError:
            pass
        raise ResourceLimitError(OUT_OF_MEMORY)
    return guarded


class FoldBudget:
    """What constant folding may allocate: each node's results, predicted before it is evaluated,
    and the running total of the constants the compile holds (the weights it started with and
    everything folded since), both against the one memory limit."""

    def __init__(self, limit: int, held: int = 0):
        self.limit = limit
        self.held = held

    def admit(self, node: onnx.NodeProto, label: str, feeds: dict[str, np.ndarray], opset: int,
              small_elements: int) -> list[tuple[str, int]]:
        """Refuse `node` before it runs when its results, or the constants held with them,
        would be over the limit. Sizes come from fold_sizes' rules on the inputs' values, else
        from ONNX shape inference (feeds of at most `small_elements` by value, larger ones by
        shape only, to stay cheap). Returns the predicted bytes of the outputs it could size."""
        what = f"node {label!r} (op {node.op_type})"
        if node.op_type in fold_sizes.UNPREDICTABLE:
            raise ResourceLimitError(
                f"{what} would run at compile time, and what it allocates cannot be known "
                "before it runs (control flow, image decoding); sparsec does not fold it. "
                "Export the model without it (torch.onnx.export traces control flow away for "
                "fixed inputs)")
        inputs = [np.asarray(feeds[name]) if name else None for name in node.input]
        bounds = fold_sizes.predict(node, inputs)
        if bounds is None:
            predicted = _inferred_bytes(node, feeds, opset, small_elements)
        else:
            predicted = [(name, elements * itemsize)
                         for name, (elements, itemsize) in zip(node.output, bounds) if name]
        self._check(what, predicted)
        return predicted

    def hold(self, node: onnx.NodeProto, label: str, results: dict[str, np.ndarray]) -> None:
        """Count `node`'s evaluated results as held; checked again, since an op without a rule
        may have been predicted by nothing."""
        sizes = [(name, int(value.nbytes)) for name, value in results.items()]
        self._check(f"node {label!r} (op {node.op_type})", sizes)
        self.held += sum(size for _, size in sizes)

    def _check(self, what: str, sizes: list[tuple[str, int]]) -> None:
        for name, size in sizes:
            check_bytes(size, f"constant {name!r} computed by {what}", self.limit)
        check_bytes(self.held + sum(size for _, size in sizes),
                    f"the constants held while folding, with those of {what},", self.limit)


def _inferred_bytes(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int,
                    small_elements: int) -> list[tuple[str, int]]:
    """Output sizes ONNX shape inference predicts for `node` alone; outputs it cannot size are
    left out (the results are checked again once evaluated)."""
    inputs, initializers = [], []
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.size <= small_elements:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    outputs = [o for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:
        return []  # evaluation reports the node's error itself
    sizes = []
    for value in list(inferred.output) + list(inferred.value_info):
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims = ttype.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            sizes.append((value.name, shape_bytes([d.dim_value for d in dims],
                                                  _itemsize(ttype.elem_type))))
    return sizes


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 8  # an unknown element type: assume the widest common one
