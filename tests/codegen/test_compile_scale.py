"""Large graphs: the run function is split into bounded parts (codegen/emit.py PART_CALLS), so
a graph of thousands of nodes compiles in seconds and still computes what onnxruntime does."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsec.codegen import emit
from tests.conftest import run_onnxruntime


def scaled_relu_chain(nodes: int, width: int = 64):
    """Mul by a constant, then Relu, `nodes` nodes in all: each one IEEE operation, so the
    outputs must equal onnxruntime's exactly."""
    names = ["x"] + [f"t{i}" for i in range(nodes - 1)] + ["y"]
    layers = [helper.make_node("Mul" if i % 2 == 0 else "Relu",
                               [names[i], "scale"] if i % 2 == 0 else [names[i]],
                               [names[i + 1]], name=f"n{i}") for i in range(nodes)]
    graph = helper.make_graph(
        layers, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(np.array(1.0009765625, np.float32), "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_5000_node_graph_compiles_and_matches_onnxruntime(compiler):
    # No IR verification after every pass: it is not what this test measures, and it would
    # multiply the compile's python time.
    model = scaled_relu_chain(5000)
    module = compiler.load(model, "native", verify_each=False, use_cache=False)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    expected = run_onnxruntime(model, {"x": x})[0]
    np.testing.assert_array_equal(module.run({"x": x})["y"], expected)


def test_profiled_layers_keep_their_plan_index_across_parts(compiler):
    nodes = 3 * emit.PART_CALLS + 5  # four parts, the last one short
    module = compiler.load(scaled_relu_chain(nodes), "native", profile=True)
    x = np.ones((1, 64), np.float32)
    # Times accumulate over runs: a 64-float Relu takes tens of nanoseconds, under one tick
    # of a coarse clock source, so one run could leave a correctly indexed layer at 0.
    for _ in range(200):
        module.run({"x": x})
    layers = module.profile()
    assert [layer["node"] for layer in layers] == [f"n{i}" for i in range(nodes)]
    assert all(layer["ms"] > 0 for layer in layers)
