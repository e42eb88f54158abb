"""Large initializers stay out of the protobuf (compiler/weights.py): the IR gets the same
values, in the same order, whether they came embedded, from external data or from a caller's
ModelProto, and every check the frontend made on them still refuses what it refused."""

from __future__ import annotations

import mmap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.compiler import frontend, weights
from sparsec.compiler.static_shapes import MAX_FOLDED_ELEMENTS
from sparsec.errors import FrontendError
from tests.graphs import model

K, N = 512, 256  # 131,072 elements: over MAX_FOLDED_ELEMENTS, so detached
assert K * N > MAX_FOLDED_ELEMENTS


def _two_layers(dtype=np.float32) -> onnx.ModelProto:
    """Two large weights around a small one, so that order and stand-ins both show."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    w2 = rng.standard_normal((N, K)).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "bias"], ["hb"]),
             helper.make_node("MatMul", ["hb", "w2"], ["y"])]
    m = model(nodes, [], [], [("w1", w1), ("bias", bias), ("w2", w2)])
    m.graph.input.append(helper.make_tensor_value_info("x", elem, [2, K]))
    m.graph.output.append(helper.make_tensor_value_info("y", elem, [2, K]))
    return m


def _expected(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _assert_imported(graph, expected: dict[str, np.ndarray]) -> None:
    assert graph.inputs == ["x"]  # the stand-ins are not run-time inputs
    assert [n for n, t in graph.tensors.items() if t.is_constant] == list(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(graph.tensors[name].data, values)
        assert graph.tensors[name].dtype == "float32"


def test_embedded_weights_are_mapped_from_the_file(tmp_path):
    m = _two_layers()
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    detached = frontend.load_model(path)
    assert sorted(detached.arrays) == ["w1", "w2"]
    assert [t.name for t in detached.proto.graph.initializer] == ["bias"]
    assert detached.proto.ByteSize() < 4096  # the weights' 1 MiB is not in it
    owner = detached.arrays["w1"]
    while isinstance(owner, (np.ndarray, memoryview)):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    assert isinstance(owner, mmap.mmap)
    assert not detached.arrays["w1"].flags.writeable
    _assert_imported(frontend.import_model(path), _expected(m))


def test_external_weights_are_mapped_from_their_file(tmp_path):
    m = _two_layers()
    expected = _expected(m)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.data", size_threshold=0)
    detached = frontend.load_model(path)
    assert sorted(detached.arrays) == ["w1", "w2"]
    bias = detached.proto.graph.initializer[0]
    assert bias.name == "bias" and bias.raw_data  # a small one is read as before
    _assert_imported(frontend.import_model(path), expected)


def test_a_callers_model_proto_is_left_as_it_was():
    m = _two_layers()
    before = m.SerializeToString()
    _assert_imported(frontend.import_model(m), _expected(m))
    assert m.SerializeToString() == before


def test_float16_weights_are_widened_when_detached(tmp_path):
    m = _two_layers(np.float16)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    graph = frontend.import_model(path)
    for name, values in _expected(m).items():
        assert graph.tensors[name].dtype == "float32"
        np.testing.assert_array_equal(graph.tensors[name].data, values.astype(np.float32))


@pytest.mark.parametrize("external,message", [
    (False, r"raw_data size \(524284 bytes\) is too small"),  # left for the checker
    (True, r"initializer 'w1' declares dims \[512, 256\] but its data does not match them"),
], ids=["embedded", "external"])
def test_data_that_disagrees_with_the_dims_is_refused(tmp_path, external, message):
    m = _two_layers()
    w1 = m.graph.initializer[0]
    w1.raw_data = w1.raw_data[:-4]
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=external, location="weights.data",
              size_threshold=0)
    with pytest.raises(FrontendError, match=message):
        frontend.import_model(path)


def test_a_detached_weight_is_still_checked_against_the_memory_limit(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_two_layers(), str(path))
    with pytest.raises(Exception, match=r"initializer 'w1' of shape \[512, 256\] would take"):
        frontend.import_model(path, max_memory=K * N * 4 - 1)


def test_an_invalid_graph_is_still_refused_by_the_checker(tmp_path):
    m = _two_layers()
    m.graph.node[1].input[1] = "nowhere"
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    with pytest.raises(FrontendError, match="not valid ONNX"):
        frontend.import_model(path)


def test_a_weight_given_twice_keeps_the_last_as_protobuf_does():
    """raw_data repeated in one tensor: protobuf keeps the last, so the walker must not pick
    the first; it leaves such a tensor in the protobuf."""
    tensor = numpy_helper.from_array(np.ones((K, N), np.float32), "w")
    twice = tensor.SerializeToString() + helper.make_tensor(
        "w", TensorProto.FLOAT, [K, N], np.full(K * N, 2, np.float32).tobytes(),
        raw=True).SerializeToString()
    view = memoryview(twice)
    assert weights._raw_data_span(view, 0, len(view)) is None
