import numpy as np
import onnx
import pytest
from onnx import helper

from sparsec.compiler import frontend
from sparsec.errors import FrontendError, ResourceLimitError, ShapeError, UnsupportedOperatorError
from tests.graphs import mlp, model


def test_imports_static_graph():
    graph = frontend.import_model(mlp())
    assert graph.inputs == ["x"] and graph.outputs == ["y"]
    assert [n.op for n in graph.nodes] == ["MatMul", "Add", "Relu"]
    assert graph.tensors["mm"].shape == (2, 16)
    assert graph.tensors["w"].is_constant


def test_unsupported_operators_are_listed_together():
    nodes = [helper.make_node("LSTM", ["x"], ["a"], name="rnn1"),
             helper.make_node("Relu", ["a"], ["b"], name="ok"),
             helper.make_node("TopK", ["b", "k"], ["y", "i"], name="top", axis=-1)]
    m = model(nodes, [("x", [2, 3])], [("y", [2, 3])], [("k", np.array([1], np.int64))])
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None))
    with pytest.raises(UnsupportedOperatorError) as err:
        frontend._check_operators(m)
    message = str(err.value)
    assert "(LSTM x1, TopK x1)" in message
    assert "'rnn1' (op LSTM): recurrent layers" in message
    assert "'top' (op TopK): the result's shape depends on the values" in message
    assert "'ok'" not in message


def test_unsupported_operators_are_grouped_with_the_fix():
    nodes = [helper.make_node("Relu", ["x"], ["a0"])]
    nodes += [helper.make_node("NonZero", [f"a{i}"], [f"a{i + 1}"], name=f"nz{i}")
              for i in range(5)]
    nodes.append(helper.make_node("FusedMatMul", ["a5", "a5"], ["y"], domain="com.microsoft"))
    m = model(nodes, [("x", [2, 3])], [("y", [2, 3])])
    with pytest.raises(UnsupportedOperatorError) as err:
        frontend._check_operators(m)
    message = str(err.value)
    assert message.startswith("6 node(s) use operators sparsec cannot compile "
                              "(NonZero x5, com.microsoft.FusedMatMul x1)")
    assert "'nz0', 'nz1', 'nz2', ... (op NonZero)" in message
    assert "'<unnamed node 6>' (op com.microsoft.FusedMatMul): an onnxruntime contrib" in message


def test_custom_domain_is_unsupported():
    m = model([helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")],
              [("x", [2])], [("y", [2])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOperatorError, match=r"'g' \(op com.microsoft.Gelu\)"):
        frontend.import_model(m)


def test_ops_on_constants_are_accepted_for_folding():
    nodes = [helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    m = model(nodes, [("x", [6])], [("y", [2, 3])], [("c", np.zeros((2, 3), np.float32))])
    graph = frontend.import_model(m)
    assert [n.op for n in graph.nodes] == ["Shape", "Reshape"]


def test_dynamic_input_needs_input_shape():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["batch", 4])],
              [("y", ["batch", 4])])
    with pytest.raises(ShapeError, match="--input-shape x=1x128"):
        frontend.import_model(m)
    graph = frontend.import_model(m, {"x": (3, 4)})
    assert graph.tensors["x"].shape == (3, 4) and graph.tensors["y"].shape == (3, 4)


def test_input_shape_errors_are_specific():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["batch", 4])],
              [("y", ["batch", 4])])
    with pytest.raises(ShapeError, match="not model inputs"):
        frontend.import_model(m, {"nope": (1, 4)})
    with pytest.raises(ShapeError, match="rank"):
        frontend.import_model(m, {"x": (1, 4, 1)})
    with pytest.raises(ShapeError, match="only dynamic dims"):
        frontend.import_model(m, {"x": (1, 5)})


@pytest.mark.parametrize("spec,expected", [("a=1x128", {"a": (1, 128)}), ("x=7", {"x": (7,)}),
                                           ("we=ird=2x2", {"we=ird": (2, 2)})])
def test_parse_input_shapes(spec, expected):
    assert frontend.parse_input_shapes([spec]) == expected


@pytest.mark.parametrize("spec", ["a", "a=", "=1x2", "a=1xb", "a=-1x2"])
def test_parse_input_shapes_rejects(spec):
    with pytest.raises(FrontendError, match="bad --input-shape"):
        frontend.parse_input_shapes([spec])


def test_bad_files(tmp_path):
    with pytest.raises(FrontendError, match="not found"):
        frontend.import_model(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not a protobuf" * 10)
    with pytest.raises(FrontendError):
        frontend.import_model(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FrontendError):
        frontend.import_model(empty)


def test_external_data_outside_model_folder_is_refused(tmp_path):
    m = mlp()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    folder = tmp_path / "model"
    folder.mkdir()
    weight = next(t for t in m.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(FrontendError, match="outside the model's folder"):
        frontend.import_model(path)


def test_external_data_inside_model_folder_loads(tmp_path):
    m = mlp(k=32, n=32)
    expected = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w"))
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.data", size_threshold=0)
    graph = frontend.import_model(path)
    np.testing.assert_array_equal(graph.tensors["w"].data, expected)


def test_external_data_past_end_of_file_is_refused(tmp_path):
    m = mlp(k=32, n=32)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.data", size_threshold=0)
    data = tmp_path / "weights.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(FrontendError, match="past the end"):
        frontend.import_model(path)


def test_opset_newer_than_known_is_refused():
    m = mlp()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(FrontendError, match="newer than the newest"):
        frontend.import_model(m)


def test_invalid_model_names_the_problem():
    m = model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")], [("x", [2])],
              [("y", [2])])
    with pytest.raises(FrontendError, match="not valid ONNX"):
        frontend.import_model(m)


def test_unnamed_nodes_are_labelled_by_position():
    m = model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("LSTM", ["a"], ["y"])],
              [("x", [2])], [("y", [2])])
    with pytest.raises(UnsupportedOperatorError, match=r"'<unnamed node 1>' \(op LSTM\)"):
        frontend._check_operators(m)
    graph = frontend.import_model(model([helper.make_node("Relu", ["x"], ["y"])],
                                        [("x", [2])], [("y", [2])]))
    assert graph.nodes[0].name == "<unnamed node 0>"


def test_absurd_shapes_are_refused_before_anything_is_sized():
    m = model([helper.make_node("Transpose", ["x"], ["y"])], [("x", [2**62 + 1, 4])],
              [("y", [4, 2**62 + 1])])
    with pytest.raises(ResourceLimitError, match="more than sparsec can address"):
        frontend.import_model(m, max_memory=1 << 62)


def test_initializer_data_longer_than_its_dims_is_an_error():
    m = mlp()
    bias = next(t for t in m.graph.initializer if t.name == "b")
    bias.raw_data = np.zeros(17, np.float32).tobytes()
    with pytest.raises(FrontendError, match=r"initializer 'b' declares dims \[16\]"):
        frontend.import_model(m)


def test_model_proto_with_external_data_is_refused(tmp_path, monkeypatch):
    m = mlp()
    weight = next(t for t in m.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 512)
    with pytest.raises(FrontendError, match="pass the model's file path"):
        frontend.import_model(m)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    m = mlp(k=32, n=32)
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(m, str(folder / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    real = tmp_path / "weights.data"
    (folder / "weights.data").rename(real)
    (folder / "weights.data").symlink_to(real)
    with pytest.raises(FrontendError, match="outside the model's folder"):
        frontend.import_model(folder / "m.onnx")


def test_shapes_computed_in_the_graph_are_folded_until_static(compiler):
    """Hugging Face's mask: Expand to a shape built by Shape, ConstantOfShape, Mul, Equal and
    Where, which ONNX shape inference alone leaves unknown (and everything after it)."""
    one = onnx.numpy_helper.from_array(np.array([1], np.int64))
    nodes = [helper.make_node("Shape", ["x"], ["dims"]),
             helper.make_node("ConstantOfShape", ["two"], ["ones"], value=one),
             helper.make_node("Mul", ["ones", "dims"], ["m"]),
             helper.make_node("Equal", ["m", "minus_one"], ["is_free"]),
             helper.make_node("Where", ["is_free", "ones", "m"], ["target"]),
             helper.make_node("Expand", ["row", "target"], ["wide"]),
             helper.make_node("Add", ["x", "wide"], ["y"])]
    onnx_model = model(nodes, [("x", [3, 5]), ("row", [1, 5])], [("y", [3, 5])],
                       [("minus_one", np.array([-1, -1], np.int64)),
                        ("two", np.array([2], np.int64))])
    inferred = onnx.shape_inference.infer_shapes(onnx_model, data_prop=True)
    (wide,) = [v for v in inferred.graph.value_info if v.name == "wide"]
    assert not wide.type.tensor_type.shape.dim[0].HasField("dim_value"), "must need folding"
    graph = frontend.import_model(onnx_model)
    assert graph.tensors["wide"].shape == (3, 5)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 5)).astype(np.float32),
             "row": rng.standard_normal((1, 5)).astype(np.float32)}
    got = compiler.load(onnx_model, "generic").run(feeds)["y"]
    np.testing.assert_array_equal(got, feeds["x"] + feeds["row"])
