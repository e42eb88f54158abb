"""float16 models computed in float32: every float16 weight, constant, cast target and
declared value inside the graph is widened to float32 before import.

Models converted with onnxruntime's `convert_float_to_float16(..., keep_io_types=True)` keep
float32 inputs and outputs and cast to and from float16 inside; after widening those casts
are float32 to float32. Widening is exact (every float16 is a float32), and the arithmetic is
then float32's: the results differ from a float16 runtime's by that runtime's float16
rounding of each activation, not by any error of sparsec's.

A float16 graph input or output (converted without keep_io_types, or exported in half
precision) stays float16 at the boundary, so the caller passes and gets what the model
declares: a Cast to float32 follows each such input and a Cast to float16 precedes each such
output, and only those Casts touch float16 (IEEE binary16, exact conversions).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import FrontendError

FLOAT16 = TensorProto.FLOAT16


def widen(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 replaced by float32 inside the graph, float16 inputs and
    outputs kept and cast at the edge (a copy when anything changes)."""
    return widen_detached(model, {})[0]


def widen_detached(model: onnx.ModelProto, detached: dict[str, np.ndarray]
                   ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`widen`, for a model whose `detached` initializers are kept outside the protobuf (each
    stood in for by a graph input of its name, compiler/weights.py): float16 ones are widened
    likewise (into a new dict)."""
    if not _uses_float16(model) and all(a.dtype != np.float16 for a in detached.values()):
        return model, detached
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for index, tensor in enumerate(g.initializer):
        if tensor.data_type == FLOAT16:
            g.initializer[index].CopyFrom(_widened(tensor))
    detached = {name: array.astype(np.float32) if array.dtype == np.float16 else array
                for name, array in detached.items()}
    for value in g.input:  # the stand-ins of detached float16 initializers
        if value.name in detached and value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for value in g.value_info:
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT16:
                attr.t.CopyFrom(_widened(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT16:
                attr.i = TensorProto.FLOAT
    renamed = _cast_boundary(g, set(detached))
    return model, {renamed.get(name, name): array for name, array in detached.items()}


def _cast_boundary(g: onnx.GraphProto, detached: set[str]) -> dict[str, str]:
    """Inside, each float16 input or output N is renamed to a float32 tensor; Cast(N) makes it
    from an input, Cast(to float16) makes an output from it. An input returned as an output
    is copied as it is. Returns the renames."""
    constants = {t.name for t in g.initializer} | detached
    inputs = [v.name for v in g.input
              if v.type.tensor_type.elem_type == FLOAT16 and v.name not in constants]
    outputs = [v.name for v in g.output if v.type.tensor_type.elem_type == FLOAT16]
    boundary = set(inputs) | set(outputs)
    if not boundary:
        return {}
    taken = constants | {v.name for v in [*g.input, *g.output, *g.value_info]} \
        | {name for node in g.node for name in [*node.input, *node.output]}
    inside = {}
    for name in sorted(boundary):
        unique, count = f"{name}__float32", 0
        while unique in taken:
            count += 1
            unique = f"{name}__float32_{count}"
        inside[name] = unique
        taken.add(unique)
    for node in g.node:
        node.input[:] = [inside.get(name, name) for name in node.input]
        node.output[:] = [inside.get(name, name) for name in node.output]
    for tensor in g.initializer:  # a float16 output that is a constant
        tensor.name = inside.get(tensor.name, tensor.name)
    for value in g.input:  # a detached one's stand-in
        if value.name in detached:
            value.name = inside.get(value.name, value.name)
    for value in g.value_info:
        value.name = inside.get(value.name, value.name)
    casts_in = [helper.make_node("Cast", [name], [inside[name]], to=TensorProto.FLOAT,
                                 name=f"{name}__to_float32") for name in dict.fromkeys(inputs)]
    casts_out = [helper.make_node("Cast", [inside[name]], [name], to=FLOAT16,
                                  name=f"{name}__to_float16")
                 for name in dict.fromkeys(outputs) if name not in inputs]
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    return inside


def _uses_float16(model: onnx.ModelProto) -> bool:
    g = model.graph
    return (any(t.data_type == FLOAT16 for t in g.initializer)
            or any(v.type.tensor_type.elem_type == FLOAT16
                   for v in [*g.input, *g.output, *g.value_info])
            or any((a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT16)
                   or (n.op_type == "Cast" and a.name == "to" and a.i == FLOAT16)
                   for n in g.node for a in n.attribute))


def _widened(tensor: TensorProto) -> TensorProto:
    try:
        values = numpy_helper.to_array(tensor)
    except Exception as exc:  # data that disagrees with its dims: the file's fault
        raise FrontendError(f"float16 tensor {tensor.name!r} declares dims {list(tensor.dims)} "
                            f"but its data does not match them ({exc})") from None
    return numpy_helper.from_array(values.astype("float32"), tensor.name)
