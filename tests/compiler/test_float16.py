"""float16 models (onnxruntime's convert_float_to_float16, with keep_io_types=True or without)
compile and run in float32; float16 inputs and outputs stay float16 at the boundary."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.compiler import float16, frontend
from tests.conftest import run_onnxruntime


def half_model(io_type=TensorProto.FLOAT):
    """float32 x -> Cast(float16) -> MatMul(float16 w) + float16 bias -> Relu -> Cast(float32),
    the shape of what convert_float_to_float16 writes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float16)
    b = rng.standard_normal(4).astype(np.float16)
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["xh", "w"], ["mm"]),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b, "b")),
             helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "half", [helper.make_tensor_value_info("x", io_type, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [numpy_helper.from_array(w, "w")],
        value_info=[helper.make_tensor_value_info("mm", TensorProto.FLOAT16, [3, 4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_float16_inside_is_widened_exactly():
    m = half_model()
    widened = float16.widen(m)
    (w,) = widened.graph.initializer
    assert w.data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(w),
                                  numpy_helper.to_array(m.graph.initializer[0]))
    assert m.graph.initializer[0].data_type == TensorProto.FLOAT16, "the input is unchanged"
    assert widened.graph.value_info[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(a.i == TensorProto.FLOAT for n in widened.graph.node if n.op_type == "Cast"
               for a in n.attribute)


def test_float32_model_is_returned_as_it_is():
    m = onnx.ModelProto()
    m.graph.name = "empty"
    assert float16.widen(m) is m


@pytest.mark.parametrize("target", ["generic", "native"])
def test_float16_model_runs_in_float32(target, compiler):
    """onnxruntime rounds x and the product to float16 (relative 2**-11 each, on values
    below ~10 here); sparsec keeps float32. Bound: 3 roundings of the largest output."""
    m = half_model()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    got = compiler.load(m, target).run({"x": x})["y"]
    (expected,) = run_onnxruntime(m, {"x": x})
    assert got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= 3 * 2.0**-11 * np.max(np.abs(expected))
    exact = np.maximum(x @ numpy_helper.to_array(m.graph.initializer[0]).astype(np.float32)
                       + numpy_helper.to_array(m.graph.node[2].attribute[0].t), 0)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


def test_float16_boundary_is_kept_and_cast():
    """A float16 input is cast to float32 before anything reads it; nothing else inside sees
    float16."""
    widened = float16.widen(half_model(io_type=TensorProto.FLOAT16))
    assert widened.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    first = widened.graph.node[0]
    assert (first.op_type, list(first.input), first.attribute[0].i) == \
        ("Cast", ["x"], TensorProto.FLOAT)
    assert all("x" not in node.input for node in widened.graph.node[1:])
    graph = frontend.import_model(half_model(io_type=TensorProto.FLOAT16))
    assert graph.tensors["x"].dtype == "float16"
    assert [t.dtype for t in graph.tensors.values()].count("float16") == 1


def edge_model() -> onnx.ModelProto:
    """float16 outputs that no node computes in float32: the input itself, and a constant;
    plus an input named like the renamed tensor would be."""
    half = TensorProto.FLOAT16
    c = numpy_helper.from_array(np.float16([1.5, -2.0, 65504.0]), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x__float32"], ["s"])], "edges",
        [helper.make_tensor_value_info("x", half, [3]),
         helper.make_tensor_value_info("x__float32", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("x", half, [3]),
         helper.make_tensor_value_info("c", half, [3]),
         helper.make_tensor_value_info("s", half, [3])], [c])
    graph.node[0].input[1] = "y"
    graph.node.insert(0, helper.make_node("Cast", ["x__float32"], ["y"], to=half))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("target", ["generic", "native"])
def test_float16_outputs_from_inputs_and_constants(target, compiler):
    x = np.float16([0.1, -3.0, 7.5])
    x32 = np.float32([1.0, 2.0**-20, 3.0])
    got = compiler.load(edge_model(), target).run({"x": x, "x__float32": x32})
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["c"], np.float16([1.5, -2.0, 65504.0]))
    np.testing.assert_array_equal(got["s"], (x.astype(np.float32)
                                             + x32.astype(np.float16)).astype(np.float16))
    assert all(v.dtype == np.float16 for v in got.values())
