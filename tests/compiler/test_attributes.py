import pytest

from sparsec.compiler import attributes
from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.errors import FrontendError


def graph(op: str, rank_in: int = 3, rank_out: int | None = None, **attrs) -> Graph:
    tensors = {"x": Tensor("x", (2,) * rank_in, "float32"),
               "y": Tensor("y", (2,) * (rank_in if rank_out is None else rank_out), "float32")}
    return Graph(inputs=["x"], outputs=["y"], nodes=[Node(op, ["x"], ["y"], attrs, "n")],
                 tensors=tensors, opset=17)


@pytest.mark.parametrize("op,attrs,rank_out", [
    ("Softmax", {"axis": -3}, None), ("Softmax", {"axis": 2}, None),
    ("Flatten", {"axis": 3}, 2), ("Flatten", {"axis": -3}, 2),
    ("Transpose", {"perm": [2, 0, 1]}, None), ("Squeeze", {"axes": [0, -1]}, 1),
    ("Unsqueeze", {"axes": [3, -5]}, 5), ("Gather", {"axis": -1}, None),
])
def test_axes_in_range_pass(op, attrs, rank_out):
    attributes.check(graph(op, rank_out=rank_out, **attrs))


@pytest.mark.parametrize("op,attrs,rank_out,message", [
    ("Softmax", {"axis": -(2**63)}, None, r"axis -9223372036854775808 is out of range .*-3 to 2"),
    ("Softmax", {"axis": 3}, None, "axis 3 is out of range"),
    ("Flatten", {"axis": 4}, 2, r"allowed: -3 to 3"),
    ("LayerNormalization", {"axis": -4}, None, "out of range"),
    ("Transpose", {"perm": [0, 0, 1]}, None, "not a permutation of the input's 3 axes"),
    ("Transpose", {"perm": [0, 1]}, None, "not a permutation"),
    ("Squeeze", {"axes": [1, -2]}, 1, "names an axis twice"),
    ("ReduceMean", {"axes": [5]}, None, "axes 5 is out of range"),
    ("Unsqueeze", {"axes": [5]}, 4, "axes 5 is out of range for a tensor of rank 4"),
    ("Concat", {"axis": 1.5}, None, "must hold integers"),
])
def test_axes_out_of_range_name_the_node(op, attrs, rank_out, message):
    with pytest.raises(FrontendError, match=rf"node 'n' \(op {op}\): .*{message}"):
        attributes.check(graph(op, rank_out=rank_out, **attrs))
