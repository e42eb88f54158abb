import numpy as np
import pytest
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.passes import fold_constants
from sparsec.errors import ShapeError, SparsecError
from tests.compiler.passes.helpers import context, ir, run_passes
from tests.graphs import model


def test_shape_arithmetic_folds_into_a_constant():
    after = run_passes("""
        graph opset=17
          input  'x': float32[6]
          const  'c': float32[2x3] const
          %0 Shape('c') -> 's': int64[2]  # node 'shape'
          %1 Reshape('x', 's') -> 'y'  # node 'reshape'
          output 'y': float32[2x3]
        """, fold_constants)
    assert after == ir("""
        graph opset=17
          input  'x': float32[6]
          const  's': int64[2] const
          %0 Reshape('x', 's') -> 'y'  # node 'reshape'
          output 'y': float32[2x3]
        """)


def test_folding_leaves_the_input_graph_alone():
    nodes = [helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    before = frontend.import_model(model(nodes, [("x", [6])], [("y", [2, 3])],
                                         [("c", np.zeros((2, 3), np.float32))]))
    after = fold_constants.run(before, context())
    np.testing.assert_array_equal(after.tensors["s"].data, [2, 3])
    assert [n.op for n in before.nodes] == ["Shape", "Reshape"]


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


def test_gather_elements_folds_with_indices_smaller_than_data():
    """RoBERTa's buffered token types: a [1, 64] table indexed by [1, 16] position ids. onnx's
    reference evaluator raised "cannot reshape array of size 1 into shape (1,16)" here."""
    table = np.arange(64, dtype=np.float32).reshape(1, 64) * 10
    positions = np.array([[3, 1, -1, 0] * 4], np.int64)
    nodes = [helper.make_node("GatherElements", ["table", "positions"], ["types"], axis=1),
             helper.make_node("Add", ["x", "types"], ["y"])]
    graph = fold_constants.run(frontend.import_model(
        model(nodes, [("x", [1, 16])], [("y", [1, 16])],
              [("table", table), ("positions", positions)])), context())
    assert [n.op for n in graph.nodes] == ["Add"]
    np.testing.assert_array_equal(graph.tensors["types"].data, [[30, 10, 630, 0] * 4])


def test_gather_elements_out_of_range_index_is_refused():
    nodes = [helper.make_node("GatherElements", ["table", "positions"], ["types"], axis=1),
             helper.make_node("Add", ["x", "types"], ["y"])]
    onnx_model = model(nodes, [("x", [1, 2])], [("y", [1, 2])],
                       [("table", np.zeros((1, 4), np.float32)),
                        ("positions", np.array([[0, 4]], np.int64))])
    with pytest.raises(SparsecError, match="outside"):
        fold_constants.run(frontend.import_model(onnx_model), context())
