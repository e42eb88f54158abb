"""Malformed and oversized model files: each is refused with one `sparsec: error: ...` line that
names the problem, never a traceback, a crash or an allocation the size of the lie."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.cli import main
from sparsec.compiler import limits
from sparsec.errors import ResourceLimitError
from tests.graphs import mlp, model

F = TensorProto.FLOAT


def _proto(nodes, inputs, outputs, initializers=(), value_info=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers),
                              value_info=list(value_info))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _value(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _relu(opset=17, shape=(2,), domain=""):
    return _proto([helper.make_node("Relu", ["x"], ["y"], domain=domain)],
                  [_value("x", list(shape))], [_value("y", list(shape))], opset=opset)


def _resized(name, array, dims):
    tensor = numpy_helper.from_array(array, name)
    tensor.dims[:] = dims
    return tensor


def _big(shape):
    return numpy_helper.from_array(np.array(shape, np.int64), "shape")


GOOD = mlp().SerializeToString()
CASES = {
    "random-bytes": (np.random.default_rng(0).bytes(512), "not a readable ONNX model"),
    "truncated": (GOOD[:len(GOOD) // 2], "not a readable ONNX model"),
    "empty": (b"", "is empty, not an ONNX model"),
    "dangling-input": (_proto([helper.make_node("Add", ["x", "ghost"], ["y"])],
                              [_value("x", [2])], [_value("y", [2])]), "'ghost'"),
    "cycle": (_proto([helper.make_node("Add", ["x", "b"], ["a"]),
                      helper.make_node("Relu", ["a"], ["b"])],
                     [_value("x", [2])], [_value("b", [2])]), "topologically sorted"),
    "data-shorter-than-dims": (
        _proto([helper.make_node("MatMul", ["x", "w"], ["y"])], [_value("x", [2, 5])],
               [_value("y", [2, 4])], [_resized("w", np.ones((3, 4), np.float32), [5, 4])]),
        "raw_data size (48 bytes) is too small"),
    "data-longer-than-dims": (
        _proto([helper.make_node("Add", ["x", "w"], ["y"])], [_value("x", [4])],
               [_value("y", [4])], [_resized("w", np.ones(6, np.float32), [4])]),
        "initializer 'w' declares dims [4]"),
    "shape-contradiction": (_proto([helper.make_node("Relu", ["x"], ["y"])], [_value("x", [2, 3])],
                                   [_value("y", [4, 5])]), "Inferred shape and existing shape"),
    "matmul-mismatch": (
        _proto([helper.make_node("MatMul", ["x", "w"], ["y"])], [_value("x", [2, 5])],
               [_value("y", [2, 4])], [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")]),
        "Incompatible dimensions"),
    "name-not-utf8": (_proto([helper.make_node("Relu", ["x"], ["y"], name="\u00e9")],
                             [_value("x", [2])], [_value("y", [2])]).replace(b"\xc3\xa9",
                                                                             b"\xff\xa9"),
                      "field 'name' holds b'\\xff\\xa9'..., which is not UTF-8 text"),
    "unknown-op": (_proto([helper.make_node("Frobnicate", ["x"], ["y"])], [_value("x", [2])],
                          [_value("y", [2])]), "Frobnicate"),
    "unknown-domain": (_relu(domain="evil.corp"), "'evil.corp'"),
    "opset-too-new": (_relu(opset=99), "opset 99, newer than"),
    "negative-dim": (_relu(shape=(2, -3)), "negative dimension (-3)"),
    "negative-initializer-dim": (
        _proto([helper.make_node("Add", ["x", "w"], ["y"])], [_value("x", [3])],
               [_value("y", [3])], [_resized("w", np.ones(3, np.float32), [-3])]),
        "Negative dimension"),
    "no-outputs": (_proto([helper.make_node("Relu", ["x"], ["y"])], [_value("x", [2])], []),
                   "no outputs"),
    "two-writers": (_proto([helper.make_node("Relu", ["x"], ["y"]),
                            helper.make_node("Neg", ["x"], ["y"])],
                           [_value("x", [2])], [_value("y", [2])]), "single static assignment"),
    "attribute-of-wrong-type": (
        _proto([helper.make_node("Softmax", ["x"], ["y"], axis="one")], [_value("x", [2])],
               [_value("y", [2])]), "Mismatched attribute type"),
    "attribute-out-of-range": (
        _proto([helper.make_node("Softmax", ["x"], ["y"], axis=9)], [_value("x", [2])],
               [_value("y", [2])]), "'axis' must be in"),
    "sequence-input": (
        _proto([helper.make_node("SequenceLength", ["s"], ["y"])],
               [helper.make_tensor_sequence_value_info("s", F, [2])],
               [_value("y", [], TensorProto.INT64)]), "(op SequenceLength)"),
    "huge-input": (_relu(shape=(1 << 20, 1 << 14)), "would take 64.0 GiB"),
    "huge-constant": (
        _proto([helper.make_node("ConstantOfShape", ["shape"], ["c"]),
                helper.make_node("Add", ["x", "c"], ["y"])],
               [_value("x", [1])], [_value("y", ["n", "m"])], [_big([100000, 100000])]),
        "'c' of shape [100000, 100000] would take 37.3 GiB"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_model_is_one_clear_error(case, tmp_path, capsys, monkeypatch, cache_dir):
    data, message = CASES[case]
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert main(["compile", str(path), "--target", "generic", "-o",
                 str(tmp_path / "m.so")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "m.so").exists()


def test_cli_prints_no_traceback_for_a_corrupt_file(tmp_path):
    """The same path through a real process: the exit code and stderr users see."""
    path = tmp_path / "model.onnx"
    path.write_bytes(CASES["truncated"][0])
    result = subprocess.run([sys.executable, "-m", "sparsec", "compile", str(path), "-o",
                             str(tmp_path / "m.so")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("sparsec: error: ") and "Traceback" not in result.stderr


def _chain(width: int, length: int):
    """Relu after Relu: every intermediate small, together a large arena if none could share."""
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(length)]
    return model(nodes, [("t0", [width])], [(f"t{length}", [width])])


def test_weights_over_the_limit_are_refused_and_the_limit_can_be_raised(compiler):
    big = mlp(k=256, n=512, m=64)  # 512 KiB of weights and 2 KiB of bias; x and y are the caller's
    with pytest.raises(ResourceLimitError, match=r"weights together would take 514.0 KiB"):
        compiler.compile(big, max_memory="513K")
    compiler.compile(big, max_memory="2M")


def test_an_arena_over_the_limit_is_refused_though_every_tensor_fits(compiler):
    chain = _chain(1 << 16, 4)  # 256 KiB intermediates, two alive at once
    with pytest.raises(ResourceLimitError, match=r"activation arena 512.0 KiB"):
        compiler.compile(chain, max_memory="300K")
    compiler.compile(chain, max_memory="600K")


def test_one_tensor_over_the_limit_names_it_and_its_size(compiler):
    with pytest.raises(ResourceLimitError,
                       match=r"tensor 't0' of shape \[1048576\] would take 4.0 MiB"):
        compiler.compile(_chain(1 << 20, 2), max_memory="1M")


def test_cli_takes_max_memory(tmp_path, capsys, cache_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    path = tmp_path / "big.onnx"
    onnx.save(mlp(k=256, n=512, m=64), path)
    assert main(["compile", str(path), "--target", "generic", "--max-memory", "100K", "-o",
                 str(tmp_path / "m.so")]) == 1
    assert "raise it with --max-memory" in capsys.readouterr().err
    assert main(["compile", str(path), "--target", "generic", "--max-memory", "1G", "-o",
                 str(tmp_path / "m.so")]) == 0
    assert main(["compile", str(path), "--target", "generic", "--max-memory", "lots", "-o",
                 str(tmp_path / "m.so")]) == 1
    assert "bad memory size 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("text,size", [("123", 123), ("4K", 4096), ("1.5G", 3 << 29),
                                       ("8GiB", 8 << 30), ("2mb", 2 << 20)])
def test_parse_size(text, size):
    assert limits.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "1Q", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ResourceLimitError):
        limits.parse_size(text)


@pytest.mark.parametrize("node,feeds", [
    (helper.make_node("ConstantOfShape", ["s"], ["c"], name="cos"),
     {"s": np.array([1 << 16, 1 << 16], np.int64)}),
    (helper.make_node("Expand", ["v", "s"], ["c"], name="expand"),
     {"v": np.ones(1, np.float32), "s": np.array([1 << 16, 1 << 16], np.int64)}),
    (helper.make_node("Tile", ["v", "r"], ["c"], name="tile"),
     {"v": np.ones((2, 2), np.float32), "r": np.array([1 << 15, 1 << 15], np.int64)}),
    (helper.make_node("Range", ["a", "b", "d"], ["c"], name="range"),
     {"a": np.array(0.0, np.float32), "b": np.array(1e10, np.float32),
      "d": np.array(1.0, np.float32)}),
    # Inputs too large to pass by value still give their shapes: an outer sum by broadcasting.
    (helper.make_node("Add", ["u", "v"], ["c"], name="outer"),
     {"u": np.ones((1 << 15, 1), np.float32), "v": np.ones((1, 1 << 15), np.float32)}),
])
def test_constant_results_are_sized_before_they_are_evaluated(node, feeds):
    with pytest.raises(ResourceLimitError, match=f"node {node.name!r}"):
        limits.FoldBudget(1 << 30).admit(node, node.name, feeds, 17, small_elements=1 << 12)
    limits.FoldBudget(1 << 50).admit(node, node.name, feeds, 17, small_elements=1 << 12)

