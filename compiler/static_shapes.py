"""Make shapes computed at run time static before import, by evaluating the shape subgraphs.

Exporters compute some shapes inside the graph: the attention mask of a Hugging Face export is
an `Expand` to a shape built from `Shape`, `Concat`, `ConstantOfShape` and `Where` of values
that are all known once the inputs' shapes are. ONNX shape inference cannot see through them,
so every value downstream is left without a shape. Here the small nodes whose inputs are
constants (or, for Shape and Size, have static shapes) are evaluated and become initializers,
then inference runs again, until every value has a static shape or nothing more folds.

Only small results are folded here (shape arithmetic and masks); large constant work, such as
transposing a weight, stays for the fold_constants pass on the IR.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from sparsec.compiler import limits
from sparsec.compiler.ops import SHAPE_OPS
from sparsec.errors import FrontendError, ResourceLimitError, ShapeError

MAX_FOLDED_ELEMENTS = 1 << 16
"""Larger results are left to fold_constants; shape values and masks are far smaller."""
MAX_FOLDED_BYTES = MAX_FOLDED_ELEMENTS * 8  # the widest element types


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        text = str(exc).strip()
        raise ShapeError("shape inference failed: "
                         + (text.splitlines()[0] if text else type(exc).__name__)) from None


def resolve(model: onnx.ModelProto, opset: int,
            max_memory: int = limits.DEFAULT_MAX_MEMORY, held: int = 0) -> onnx.ModelProto:
    """Inferred model; shape subgraphs folded where inference alone leaves shapes unknown.
    No folded node may produce more than `max_memory` bytes, nor bring the constants held
    (`held` bytes kept outside the protobuf, its initializers, and what folds) to more
    (checked before evaluating)."""
    model = infer(model)
    budget = limits.FoldBudget(max_memory, held + sum(
        limits.shape_bytes(t.dims, limits._itemsize(t.data_type)) for t in model.graph.initializer))
    while _missing_shapes(model) and _fold_small_constants(model, opset, budget):
        model = infer(model)
    return model


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = model.graph
    shapes = {t.name: tuple(t.dims) for t in g.initializer}
    for value in list(g.input) + list(g.value_info) + list(g.output):
        ttype = value.type.tensor_type
        if value.name in shapes or not value.type.HasField("tensor_type") \
                or not ttype.HasField("shape"):
            continue
        dims = ttype.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _missing_shapes(model: onnx.ModelProto) -> bool:
    known = static_shapes(model)
    return any(out and out not in known for node in model.graph.node for out in node.output)


def _fold_small_constants(model: onnx.ModelProto, opset: int,
                          budget: limits.FoldBudget) -> bool:
    """Replace foldable nodes with small results by initializers; False when none folded."""
    g = model.graph
    shapes = static_shapes(model)
    values = {}  # folded here, by name
    initializers = {t.name: t for t in g.initializer}
    kept = []
    for index, node in enumerate(g.node):
        result = None
        if node.op_type in SHAPE_OPS and node.input and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            result = {node.output[0]: shape_value(node.op_type, shapes[node.input[0]], attrs)}
        elif all(not n or n in initializers or n in values for n in node.input) \
                and node.domain in ("", "ai.onnx"):
            label = node.name or f"<unnamed node {index}>"
            result = _evaluate(node, label, initializers, values, opset, budget)
        if result is None:
            kept.append(node)
            continue
        values.update(result)
    if not values:
        return False
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())
    _drop_stale_value_info(g, set(values))
    return True


def shape_value(op: str, shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    """What Shape (with its start/end attributes) or Size gives for a tensor of `shape`."""
    if op == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    # Python slicing clamps start/end exactly as Shape-15 specifies.
    return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)


def _evaluate(node, label, initializers, folded, opset,
              budget: limits.FoldBudget) -> dict[str, np.ndarray] | None:
    feeds = {}
    for name in node.input:
        if not name:
            continue
        if name in folded:
            feeds[name] = folded[name]
            continue
        tensor = initializers[name]
        if int(np.prod(tensor.dims, dtype=np.int64)) > MAX_FOLDED_ELEMENTS:
            return None  # a weight: fold_constants deals with it
        feeds[name] = numpy_helper.to_array(tensor)
    predicted = budget.admit(node, label, feeds, opset, MAX_FOLDED_ELEMENTS)
    if any(size > MAX_FOLDED_BYTES for _, size in predicted):
        return None  # not worth evaluating twice: fold_constants will
    results = evaluate(node, feeds, opset, label)
    results = {name: np.asarray(value) for name, value in zip(node.output, results) if name}
    if any(v.size > MAX_FOLDED_ELEMENTS for v in results.values()):
        return None  # left to fold_constants, which counts it then
    budget.hold(node, label, results)
    return results


def evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int,
             label: str | None = None) -> list:
    """One node's outputs on constant inputs, by onnx's reference evaluator, except where that
    evaluator is wrong (GatherElements). Running out of memory is a refusal, not a crash."""
    label = node.name if label is None else label
    try:
        if node.op_type == "GatherElements":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            return [gather_elements(*(feeds[name] for name in node.input[:2]), axis)]
        return ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except MemoryError:
        raise ResourceLimitError(f"ran out of memory evaluating constant node {label!r} "
                                 f"(op {node.op_type}) at compile time; the process's memory "
                                 "limit (ulimit -v) or the machine's is below what it needs"
                                 ) from None
    except Exception as exc:
        raise FrontendError(f"cannot evaluate constant node {label!r} (op {node.op_type}): "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None


def gather_elements(data: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """GatherElements as ONNX specifies it (and onnxruntime computes it): the output has the
    indices' shape, which may be smaller than data's off the axis. onnx 1.23's reference
    raises there (a [1, 64] table indexed by [1, 16] position ids: "cannot reshape array of
    size 1 into shape (1,16)"), and wraps out-of-range indices instead of refusing them."""
    rank = data.ndim
    if indices.ndim != rank or not -rank <= axis < rank:
        raise ValueError(f"indices of rank {indices.ndim} (axis {axis}) for data of rank {rank}")
    axis %= rank
    if any(i > d for k, (i, d) in enumerate(zip(indices.shape, data.shape)) if k != axis):
        raise ValueError(f"indices of shape {list(indices.shape)} are larger than data of "
                         f"shape {list(data.shape)} off axis {axis}")
    size = data.shape[axis]
    index = indices.astype(np.int64)
    if index.size and (index.min() < -size or index.max() >= size):
        raise ValueError(f"an index is outside [-{size}, {size})")
    window = tuple(slice(None) if k == axis else slice(0, n)
                   for k, n in enumerate(indices.shape))
    return np.take_along_axis(data[window], np.where(index < 0, index + size, index), axis)


def _drop_stale_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
