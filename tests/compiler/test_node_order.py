"""Graphs whose nodes are out of order (onnxruntime loads them, sorting) are sorted at import,
stably; a graph no order fixes is still refused by the checker with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from sparsec.compiler import node_order
from sparsec.errors import FrontendError
from tests.conftest import run_onnxruntime
from tests.graphs import model


def chain(order: list[int]):
    """x -> a = x + 1 -> b = a * 2, c = a - 3 (independent) -> y = b + c, nodes listed in
    `order` (indices into that list)."""
    nodes = [helper.make_node("Add", ["x", "one"], ["a"], name="a"),
             helper.make_node("Mul", ["a", "two"], ["b"], name="b"),
             helper.make_node("Sub", ["a", "three"], ["c"], name="c"),
             helper.make_node("Add", ["b", "c"], ["y"], name="y")]
    return model([nodes[i] for i in order], [("x", [2, 3])], [("y", [2, 3])],
                 [("one", np.float32(1)), ("two", np.float32(2)), ("three", np.float32(3))])


def test_sorted_graph_is_returned_as_it_is():
    graph = chain([0, 1, 2, 3])
    assert node_order.sorted_model(graph) is graph


@pytest.mark.parametrize("order", [[3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1]])
def test_nodes_out_of_order_are_sorted_stably(order, compiler):
    """Of the nodes ready at each step the one earliest in the file goes first, so b and c
    keep the file's relative order; the model itself is left as it was."""
    graph = chain(order)
    names = [graph.graph.node[i].name for i in range(4)]
    fixed = node_order.sorted_model(graph)
    expected = ["a", *sorted("bc", key=names.index), "y"]
    assert [node.name for node in fixed.graph.node] == expected
    assert [node.name for node in graph.graph.node] == names
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = compiler.load(graph, "generic").run({"x": x})["y"]
    np.testing.assert_array_equal(got, run_onnxruntime(graph, {"x": x})[0])


def test_cycle_is_refused_by_the_checker(compiler):
    graph = chain([0, 1, 2, 3])
    graph.graph.node[0].input[0] = "y"  # a = y + 1: a cycle through every node
    with pytest.raises(FrontendError, match="topologically sorted"):
        compiler.compile(graph, "generic")
