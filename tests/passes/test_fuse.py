import numpy as np
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.passes import detect_sparsity, fuse
from sparsec.compiler.verify import verify
from tests.graphs import mlp, model
from tests.passes.helpers import context


def fused(m):
    ctx = context()
    graph = fuse.run(detect_sparsity.run(frontend.import_model(m), ctx), ctx)
    verify(graph, "fuse")
    return graph


def test_matmul_bias_relu_become_one_dense():
    graph = fused(mlp(k=4, n=4, density=1.0))
    assert graph.to_text().splitlines()[4:6] == [
        "  %0 Dense('x', 'w', 'b') -> 'y'  {activation='Relu', activation_params=[], alpha=1.0, "
        "beta=1.0, source_op='MatMul', trans_a=0, trans_b=0}  # node 'mm'",
        "  output 'y': float32[2x4]",
    ]


def test_graph_output_is_never_fused_away():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Relu", ["mm"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("mm", [2, 4]), ("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Relu"]


def test_intermediate_with_two_readers_is_kept():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Relu", ["mm"], ["r"]),
             helper.make_node("Add", ["mm", "r"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Relu", "Add"]


def test_bias_that_varies_by_row_is_not_absorbed_into_nd_output():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 3, 4])], [("y", [2, 3, 4])],
                        [("w", w), ("b", np.ones((3, 4), np.float32))]))
    assert [n.op for n in graph.nodes] == ["Dense", "Add"]


def test_gemm_with_clip_absorbs_constant_bounds():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], alpha=0.5),
             helper.make_node("Clip", ["g", "lo", "hi"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])],
                        [("w", w), ("c", np.ones(4, np.float32)),
                         ("lo", np.float32(0)), ("hi", np.float32(6))]))
    (node,) = graph.nodes
    assert node.op == "Dense" and node.attrs["activation"] == "Clip"
    assert node.attrs["activation_params"] == (0.0, 6.0) and node.attrs["alpha"] == 0.5


def test_clip_with_runtime_bound_is_not_absorbed():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["g"]),
             helper.make_node("Clip", ["g", "lo"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4]), ("lo", [])], [("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Clip"]
