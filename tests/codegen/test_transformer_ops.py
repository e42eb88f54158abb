"""The operators a BERT-style encoder adds, as exported (constant axes, opset 17 attributes),
against onnxruntime on every target. The node conformance cases cover them too, but there
ReduceMean's axes are graph inputs, which a compiled shape cannot take."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx import helper as h

import sparsec
from sparsec.codegen import targets
from sparsec.errors import InputError
from tests.conftest import TARGET_PARAMS, run_onnxruntime
from tests.graphs import model
from tests.runs import Runs

# float32 results of short sums and libm calls, both summed in float (in another order): each
# within a few eps of the exact value.
RTOL, ATOL = 1e-5, 1e-6


def check(compiler, target, onnx_model, feeds):
    result = compiler.compile(onnx_model, target)
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)
    for got, wanted in zip(actual.values(), run_onnxruntime(onnx_model, feeds)):
        np.testing.assert_allclose(got, wanted, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_reduce_mean_constant_axes(target, shape, data, compiler):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), max_size=rank, unique_by=lambda a:
                              a % rank))
    keepdims = data.draw(st.integers(0, 1))
    kept = [d for d in range(rank) if axes and d % rank not in {a % rank for a in axes}]
    out = [1 if (not axes or d % rank in {a % rank for a in axes}) else shape[d]
           for d in range(rank)] if keepdims else [shape[d] for d in kept]
    attrs = {"keepdims": keepdims, **({"axes": axes} if axes else {})}
    onnx_model = model([helper.make_node("ReduceMean", ["x"], ["y"], **attrs)],
                       [("x", shape)], [("y", out)])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    check(compiler, target, onnx_model, {"x": x})


@pytest.mark.parametrize("target", TARGET_PARAMS)
@pytest.mark.parametrize("axis,scale_shape", [(-1, (16,)), (1, (4, 16)), (-1, (1,))])
def test_layer_normalization_as_exported(target, axis, scale_shape, compiler):
    rng = np.random.default_rng(1)
    scale = rng.standard_normal(scale_shape).astype(np.float32)
    bias = rng.standard_normal(scale_shape).astype(np.float32)
    onnx_model = model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"],
                                         axis=axis, epsilon=1e-12)],
                       [("x", [2, 4, 16])], [("y", [2, 4, 16])], [("s", scale), ("b", bias)])
    check(compiler, target, onnx_model, {"x": rng.standard_normal((2, 4, 16)).astype("f4")})


def layer_norm_written_out(x: str, y: str) -> list:
    """(x - mean) / sqrt(var + eps) over the last axis, as torch exported it before opset 17;
    reads constants "two" and "eps"."""
    return [helper.make_node("ReduceMean", [x], ["mu"], axes=[-1]),
            helper.make_node("Sub", [x, "mu"], ["d"]),
            helper.make_node("Pow", ["d", "two"], ["d2"]),
            helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
            helper.make_node("Add", ["var", "eps"], ["ve"]),
            helper.make_node("Sqrt", ["ve"], ["sd"]),
            helper.make_node("Div", ["d", "sd"], [y])]


def layer_norm_and_erf_gelu_written_out():
    """LayerNorm as layer_norm_written_out, then x * 0.5 * (1 + erf(x / sqrt 2)), on [3, 5, 32]."""
    constants = {"two": np.float32(2), "eps": np.float32(1e-12), "half": np.float32(0.5),
                 "one": np.float32(1), "root2": np.float32(np.sqrt(2))}
    nodes = [*layer_norm_written_out("x", "n"),
             helper.make_node("Div", ["n", "root2"], ["z"]),
             helper.make_node("Erf", ["z"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["n", "e1"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["y"])]
    return model(nodes, [("x", [3, 5, 32])], [("y", [3, 5, 32])], list(constants.items()))


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_layer_norm_written_out_and_gelu_with_erf(target, compiler):
    """What torch exports before LayerNormalization and Gelu existed: ReduceMean, Sub, Pow,
    Sqrt, Div; x * 0.5 * (1 + erf(x / sqrt 2))."""
    rng = np.random.default_rng(2)
    onnx_model = layer_norm_and_erf_gelu_written_out()
    check(compiler, target, onnx_model, {"x": rng.standard_normal((3, 5, 32)).astype("f4")})


def test_gather_embeddings_and_bad_index(compiler):
    """input_ids -> embedding rows; an index outside the table stops the run with a message."""
    table = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    graph = h.make_graph([h.make_node("Gather", ["table", "ids"], ["y"], name="embed")], "g",
                         [h.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])],
                         [onnx_tensor(table, "table")])
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    module = sparsec.load(compiler.compile(onnx_model, "generic").library)
    ids = np.array([[0, 3, 9, -1, 2]], np.int64)
    np.testing.assert_array_equal(module.run({"ids": ids})["y"], table[ids])
    with pytest.raises(InputError, match=r"Gather node embed: index 10 at position 1"):
        module.run({"ids": np.array([[0, 10, 1, 1, 1]], np.int64)})


def test_unsqueeze_with_run_time_axes_is_checked(compiler):
    graph = h.make_graph([h.make_node("Unsqueeze", ["x", "axes"], ["y"], name="u")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
                          h.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 1, 4])])
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    module = sparsec.load(compiler.compile(onnx_model, "generic").library)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert module.run({"x": x, "axes": np.array([-2])})["y"].shape == (3, 1, 4)
    with pytest.raises(InputError, match="Unsqueeze node u: the axes input"):
        module.run({"x": x, "axes": np.array([0])})


def onnx_tensor(array, name):
    return numpy_helper.from_array(array, name)


def test_expand_with_run_time_shape_is_checked(compiler):
    graph = h.make_graph([h.make_node("Expand", ["x", "shape"], ["y"], name="e")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1]),
                          h.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    module = sparsec.load(compiler.compile(onnx_model, "generic").library)
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(module.run({"x": x, "shape": np.array([1, 4])})["y"],
                                  np.broadcast_to(x, (3, 4)))
    with pytest.raises(InputError, match="Expand node e: the shape input"):
        module.run({"x": x, "shape": np.array([3, 5])})


def test_slice_bounds_at_run_time_are_checked(compiler):
    graph = h.make_graph([h.make_node("Slice", ["x", "starts", "ends"], ["y"], name="s")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4]),
                          h.make_tensor_value_info("starts", TensorProto.INT64, [1]),
                          h.make_tensor_value_info("ends", TensorProto.INT64, [1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    module = sparsec.load(compiler.compile(onnx_model, "generic").library)
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    got = module.run({"x": x, "starts": np.array([-3]), "ends": np.array([-1])})["y"]
    np.testing.assert_array_equal(got, x[-3:-1])
    with pytest.raises(InputError, match="Slice node s: axis 0 gives 3 elements"):
        module.run({"x": x, "starts": np.array([0]), "ends": np.array([3])})


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_layer_norm_written_out_with_scale_and_bias_becomes_one_kernel(target, compiler):
    """torch's export of nn.LayerNorm before opset 17, gamma and beta included."""
    rng = np.random.default_rng(5)
    constants = [("two", np.float32(2)), ("eps", np.float32(1e-5)),
                 ("gamma", rng.standard_normal(24).astype(np.float32)),
                 ("beta", rng.standard_normal(24).astype(np.float32))]
    nodes = [*layer_norm_written_out("x", "n"),
             helper.make_node("Mul", ["n", "gamma"], ["scaled"]),
             helper.make_node("Add", ["scaled", "beta"], ["y"])]
    onnx_model = model(nodes, [("x", [2, 7, 24])], [("y", [2, 7, 24])], constants, opset=13)
    result = compiler.compile(onnx_model, target)
    assert [n.op for n in result.graph.nodes] == ["LayerNormalization"]
    check(compiler, target, onnx_model, {"x": rng.standard_normal((2, 7, 24)).astype("f4")})


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_matrix_transposes_move_whole_tiles_and_edges(target, compiler):
    """fp32 matrix transposes (SIMD targets: whole 16 x 16 tiles through the ISA's square
    transpose, the edges element by element), batched and not, with and without edges;
    exact, as moving bytes is."""
    runs = Runs(targets.resolve(target), compiler.cache_dir)
    rng = np.random.default_rng(5)
    for shape, perm in (([37, 50], [1, 0]), ([3, 33, 48], [0, 2, 1]), ([2, 16, 32], [0, 2, 1]),
                        ([64, 48], [1, 0])):
        out = [shape[p] for p in perm]
        onnx_model = model([helper.make_node("Transpose", ["x"], ["y"], perm=perm)],
                           [("x", shape)], [("y", out)])
        x = rng.standard_normal(shape).astype(np.float32)
        expected = np.ascontiguousarray(x.transpose(perm))
        result = compiler.compile(onnx_model, target)

        def exact(outputs, expected=expected):
            np.testing.assert_array_equal(outputs["y"], expected)

        runs.submit(result, {"x": x}, exact, label=f"{shape} perm {perm}")
    runs.flush()
