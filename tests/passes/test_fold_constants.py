import numpy as np
import pytest
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.passes import fold_constants
from sparsec.compiler.verify import verify
from sparsec.errors import ShapeError
from tests.graphs import model
from tests.passes.helpers import context


def test_shape_arithmetic_folds_into_a_constant():
    nodes = [helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    before = frontend.import_model(model(nodes, [("x", [6])], [("y", [2, 3])],
                                         [("c", np.zeros((2, 3), np.float32))]))
    after = fold_constants.run(before, context())
    verify(after, "fold")
    assert after.to_text() == (
        "graph opset=17\n"
        "  input  'x': float32[6]\n"
        "  const  's': int64[2] const\n"
        "  %0 Reshape('x', 's') -> 'y'  # node 'reshape'\n"
        "  output 'y': float32[2x3]\n")
    np.testing.assert_array_equal(after.tensors["s"].data, [2, 3])
    assert [n.op for n in before.nodes] == ["Shape", "Reshape"], "the input graph is unchanged"


def test_constant_node_and_chain_fold():
    nodes = [helper.make_node("Constant", [], ["two"], value_float=2.0),
             helper.make_node("Mul", ["w", "two"], ["w2"]),
             helper.make_node("Add", ["x", "w2"], ["y"])]
    graph = fold_constants.run(frontend.import_model(
        model(nodes, [("x", [3])], [("y", [3])], [("w", np.arange(3, dtype=np.float32))])),
        context())
    assert [n.op for n in graph.nodes] == ["Add"]
    np.testing.assert_array_equal(graph.tensors["w2"].data, [0, 2, 4])
    assert "w" not in graph.tensors and "two" not in graph.tensors


def test_contradicting_shape_is_reported():
    nodes = [helper.make_node("Identity", ["c"], ["d"], name="id"),
             helper.make_node("Add", ["x", "d"], ["y"])]
    m = model(nodes, [("x", [3])], [("y", [3])], [("c", np.zeros(3, np.float32))])
    graph = frontend.import_model(m)
    graph.tensors["d"].shape = (4,)
    with pytest.raises(ShapeError, match="node 'id'"):
        fold_constants.run(graph, context())
