"""float16 models computed in float32: every float16 weight, constant, cast target and
declared value inside the graph is widened to float32 before import.

Models converted with onnxruntime's `convert_float_to_float16(..., keep_io_types=True)` keep
float32 inputs and outputs and cast to and from float16 inside; after widening those casts
are float32 to float32. Widening is exact (every float16 is a float32), and the arithmetic is
then float32's: the results differ from a float16 runtime's by that runtime's float16
rounding of each activation, not by any error of sparsec's.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from sparsec.errors import FrontendError, UnsupportedOperatorError

FLOAT16 = TensorProto.FLOAT16


def widen(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 replaced by float32 inside the graph (a copy when anything
    changes). A float16 graph input or output is refused: the compiled library's interface
    is float32, and changing the caller's dtype silently would be worse than saying so."""
    g = model.graph
    boundary = [v.name for v in list(g.input) + list(g.output)
                if v.type.tensor_type.elem_type == FLOAT16
                and v.name not in {t.name for t in g.initializer}]
    if boundary:
        raise UnsupportedOperatorError(
            f"graph input/output {', '.join(map(repr, boundary))} is float16; sparsec computes "
            "float16 models in float32 and takes float32 at the boundary: convert with "
            "onnxruntime.transformers.float16.convert_float_to_float16(model, "
            "keep_io_types=True)")
    if not _uses_float16(model):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for index, tensor in enumerate(g.initializer):
        if tensor.data_type == FLOAT16:
            g.initializer[index].CopyFrom(_widened(tensor))
    for value in g.value_info:
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT16:
                attr.t.CopyFrom(_widened(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT16:
                attr.i = TensorProto.FLOAT
    return model


def _uses_float16(model: onnx.ModelProto) -> bool:
    g = model.graph
    return (any(t.data_type == FLOAT16 for t in g.initializer)
            or any(v.type.tensor_type.elem_type == FLOAT16 for v in g.value_info)
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
