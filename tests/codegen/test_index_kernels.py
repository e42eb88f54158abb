"""CumSum, GatherElements and GatherND kernels (the ONNX conformance cases cover their
results): indices and axes that arrive at run time outside the compiled shapes stop the run
with a message naming the node, never a read outside the input."""

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as h

import sparsec
from sparsec.errors import InputError


def _module(compiler, node, inputs, output):
    graph = h.make_graph([node], "g", [h.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                         [h.make_tensor_value_info(*output)])
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    return sparsec.load(compiler.compile(onnx_model, "generic").library)


def test_gather_nd_index_outside_data(compiler):
    module = _module(compiler, h.make_node("GatherND", ["x", "i"], ["y"], name="gnd"),
                     [("x", TensorProto.FLOAT, [2, 3]), ("i", TensorProto.INT64, [2, 2])],
                     ("y", TensorProto.FLOAT, [2]))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(module.run({"x": x, "i": np.array([[1, -1], [0, 1]])})["y"],
                                  [5, 1])
    with pytest.raises(InputError, match=r"GatherND node gnd: index 3 \(entry 1 of tuple 1\)"):
        module.run({"x": x, "i": np.array([[0, 0], [1, 3]])})


def test_gather_elements_index_outside_data(compiler):
    module = _module(compiler, h.make_node("GatherElements", ["x", "i"], ["y"], name="ge",
                                           axis=1),
                     [("x", TensorProto.FLOAT, [2, 3]), ("i", TensorProto.INT64, [1, 2])],
                     ("y", TensorProto.FLOAT, [1, 2]))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(module.run({"x": x, "i": np.array([[2, -3]])})["y"], [[2, 0]])
    with pytest.raises(InputError, match=r"GatherElements node ge: index -4 at position 1"):
        module.run({"x": x, "i": np.array([[0, -4]])})


def test_cumsum_axis_outside_rank_and_integer_wrap(compiler):
    module = _module(compiler, h.make_node("CumSum", ["x", "axis"], ["y"], name="cs"),
                     [("x", TensorProto.INT32, [2, 2]), ("axis", TensorProto.INT64, [])],
                     ("y", TensorProto.INT32, [2, 2]))
    big = np.int32(2**31 - 1)
    x = np.array([[big, 1], [1, 1]], np.int32)
    np.testing.assert_array_equal(module.run({"x": x, "axis": np.array(1)})["y"],
                                  np.cumsum(x, axis=1, dtype=np.int32))
    with pytest.raises(InputError, match=r"CumSum node cs: axis 2 is outside \[-2, 2\)"):
        module.run({"x": x, "axis": np.array(2)})
