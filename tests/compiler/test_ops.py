"""ops.weight_view: the one question every pass asks of a weighted op, what its constant K x N
weight is."""

import numpy as np

from sparsec.compiler.ir_text import parse_graph
from sparsec.compiler.ops import weight_view

GRAPH = """
    graph opset=17
      input  'x': float32[4x8]
      input  'b': float32[8x3]
      const  'w': float32[8x3] const
      %0 Dense('x', 'w', '') -> 'y': float32[4x3]  {activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}
      %1 Dense('x', 'b', '') -> 'z': float32[4x3]  {activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}
      %2 Relu('y') -> 'r': float32[4x3]
      output 'r': float32[4x3]
      output 'z': float32[4x3]
    """


def test_a_dense_over_a_constant_exposes_it_and_nothing_else_does():
    graph = parse_graph(GRAPH, {"w": np.ones((8, 3), np.float32)})
    constant, runtime, relu = graph.nodes
    assert weight_view(graph, constant) is graph.tensors["w"]
    assert weight_view(graph, constant).shape == (8, 3)  # K x N
    assert weight_view(graph, runtime) is None  # B is an activation: no weight to store
    assert weight_view(graph, relu) is None
