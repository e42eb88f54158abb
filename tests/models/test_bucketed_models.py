"""Sequence-length buckets (compiler/buckets.py, codegen/emit.py's plans, sparsec/bucketing.py):
one library holding one plan per length, against onnxruntime run on the unpadded input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.cli import main
from sparsec.codegen import build
from sparsec.compiler.buckets import MAX_BUCKETS
from sparsec.compiler.frontend import parse_input_shapes
from sparsec.errors import InputError, ShapeError
from sparsec.module import _ffi
from tests.conftest import HOST_TARGETS, run_onnxruntime

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [8, 16, 32]
VOCAB = 512
# test_tiny_bert's bound for the same encoder: 1e-4 on hidden states of magnitude ~5 after two
# layers, for fp32 sums in another order (the padded keys add exact zeros to the softmax: their
# mask term is float32's minimum, whose e^x underflows to 0).
TOLERANCE = 1e-4


def _tiny_bert_module():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bert_with_pooler(vocab: int = VOCAB) -> onnx.ModelProto:
    """The sample encoder with a dynamic sequence (positions up to 32) and a BERT pooler: the
    first token's hidden state through a Linear and Tanh, an output that does not follow the
    length."""
    model = _tiny_bert_module().tiny_bert(seq=LENGTHS[-1], vocab=vocab, dynamic=True)
    rng = np.random.default_rng(5)
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "pooler.first"),
        numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32),
                                "pooler.weight")])
    graph.node.extend([
        helper.make_node("Gather", ["last_hidden_state", "pooler.first"], ["pooler/first"],
                         axis=1, name="/pooler/Gather"),
        helper.make_node("Squeeze", ["pooler/first", "one_i64"], ["pooler/token"],
                         name="/pooler/Squeeze"),
        helper.make_node("MatMul", ["pooler/token", "pooler.weight"], ["pooler/dense"],
                         name="/pooler/MatMul"),
        helper.make_node("Tanh", ["pooler/dense"], ["pooler_output"], name="/pooler/Tanh")])
    graph.output.append(helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT,
                                                      ["batch_size", 64]))
    onnx.checker.check_model(model)
    return model


def bert_feeds(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB, (1, length)).astype(np.int64),
            "attention_mask": np.ones((1, length), np.int64)}


@pytest.fixture(scope="module", params=HOST_TARGETS)
def bert(request, tmp_path_factory, cache_dir):
    model = bert_with_pooler()
    result = sparsec.compile_model(model, request.param,
                                   tmp_path_factory.mktemp("buckets") / "bert.so",
                                   input_shapes={"input_ids": (1, LENGTHS)}, cache_dir=cache_dir,
                                   verify_each=True, parallel_min_ns=0)
    with sparsec.load(result.library, threads=2) as module:
        yield module, result, model


@settings(max_examples=20, deadline=None)
@given(length=st.integers(1, LENGTHS[-1]), seed=st.integers(0, 2**16))
@example(length=1, seed=0)
@example(length=LENGTHS[0], seed=1)
@example(length=LENGTHS[0] + 1, seed=2)
@example(length=LENGTHS[1], seed=3)
@example(length=LENGTHS[2], seed=4)
def test_any_length_matches_onnxruntime_unpadded(bert, length, seed):
    module, _, model = bert
    feeds = bert_feeds(length, seed)
    got = module.run(feeds)
    hidden, pooled = run_onnxruntime(model, feeds)
    assert got["last_hidden_state"].shape == (1, length, 64)
    assert got["pooler_output"].shape == (1, 64)  # pooled: the same in every plan, not cut
    assert np.max(np.abs(got["last_hidden_state"] - hidden)) <= TOLERANCE
    assert np.max(np.abs(got["pooler_output"] - pooled)) <= TOLERANCE


def test_lengths_beyond_the_buckets_are_refused(bert):
    module, _, _ = bert
    for length in (LENGTHS[-1] + 1, 0):
        with pytest.raises(InputError, match="buckets are 8, 16, 32"):
            module.run(bert_feeds(length, 0))
    feeds = bert_feeds(10, 0)
    feeds["attention_mask"] = feeds["attention_mask"][:, :9]
    with pytest.raises(InputError, match="lengths along their sequence axes differ"):
        module.run(feeds)
    feeds = bert_feeds(10, 0)
    feeds["input_ids"] = feeds["input_ids"][:, :, None]
    with pytest.raises(InputError, match="L up to 32"):
        module.run(feeds)


def run_through_abi(module, shapes: dict, feeds: dict, plan: int | None = None):
    """(status, outputs) of sparsec_run_plan, or sparsec_run without a plan, called as a C
    caller would, at the shapes of `shapes` (the info's top level or one of its plans)."""
    ffi, lib = _ffi(), module._lib
    outputs = {o["name"]: np.empty(o["shape"], np.float32) for o in shapes["outputs"]}
    inputs = ffi.new("void *[]", [ffi.from_buffer(feeds[t["name"]]) for t in shapes["inputs"]])
    pointers = ffi.new("void *[]", [ffi.from_buffer(o, require_writable=True)
                                    for o in outputs.values()])
    with module._lock:
        status = (lib.sparsec_run(module._context, inputs, pointers) if plan is None
                  else lib.sparsec_run_plan(module._context, plan, inputs, pointers))
    return status, outputs


def test_info_header_and_c_api_describe_the_plans(bert):
    module, result, _ = bert
    info, ffi, lib = module.info, _ffi(), module._lib
    assert info["buckets"] == {"lengths": LENGTHS,
                               "inputs": {"input_ids": [1], "attention_mask": [1]},
                               "outputs": {"last_hidden_state": [1]}}
    assert [plan["inputs"][1]["shape"] for plan in info["plans"]] == [[1, n] for n in LENGTHS]
    assert info["inputs"] == info["plans"][-1]["inputs"]  # the top level is the longest's
    assert info["arena_bytes"] == max(plan["arena_bytes"] for plan in info["plans"])
    assert lib.sparsec_num_plans() == len(LENGTHS)

    # Plan 0 straight through the ABI, as a C caller would: the same as Module.run at 8.
    feeds = bert_feeds(LENGTHS[0], 7)
    status, got = run_through_abi(module, info["plans"][0], feeds, plan=0)
    assert status == 0 and got.keys() == module.run(feeds).keys()
    for name, value in module.run(feeds).items():
        np.testing.assert_array_equal(got[name], value)
    status, _ = run_through_abi(module, info["plans"][0], feeds, plan=len(LENGTHS))
    assert status == 3
    assert "plan 3 does not exist" in ffi.string(lib.sparsec_last_error(module._context)).decode()
    # sparsec_run, for callers that ignore buckets: the longest plan, at the top level's shapes
    feeds = bert_feeds(LENGTHS[-1], 8)
    status, got = run_through_abi(module, info, feeds)
    assert status == 0
    for name, value in module.run(feeds).items():
        np.testing.assert_array_equal(got[name], value)

    header = result.header.read_text()
    assert "#define SPARSEC_MODEL_NUM_PLANS 3" in header
    assert "sparsec_model_plan_lengths[] = { 8, 16, 32 }" in header
    assert "static const int sparsec_model_input1_bucket_axes[] = { 1 };" in header
    program = result.header.parent / "uses_header.c"
    program.write_text(f'#include "{result.header.name}"\n#include "sparsec.h"\n'
                       "int main(void) { return (int)sparsec_model_plan_lengths[0] "
                       "+ sparsec_model_output0_bucket_axes[0]; }\n")
    subprocess.run([build.find_compiler(), "-std=c11", "-Wall", "-Werror", "-fsyntax-only",
                    "-I", str(result.header.parent), str(program)], check=True)


def no_mask_model() -> onnx.ModelProto:
    """Features of any length through a Linear and Relu: nothing could hide padded rows."""
    weight = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "no_mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 4])],
        [numpy_helper.from_array(weight, "w")]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_without_a_mask_only_bucket_lengths_run(compiler):
    model = no_mask_model()
    module = compiler.load(model, input_shapes={"x": (1, [4, 8], 8)})
    rng = np.random.default_rng(0)
    for length in (4, 8):
        x = rng.standard_normal((1, length, 8)).astype(np.float32)
        (expected,) = run_onnxruntime(model, {"x": x})
        # fp32 sums of 8 products in another order
        np.testing.assert_allclose(module.run({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)
    for length in (5, 1):
        with pytest.raises(InputError, match=r"not one of this library's bucket lengths \(4, "
                                             r"8\); the model takes no attention mask"):
            module.run({"x": np.zeros((1, length, 8), np.float32)})
    with pytest.raises(InputError, match="buckets are 4, 8"):
        module.run({"x": np.zeros((1, 9, 8), np.float32)})


def test_weights_are_stored_once(compiler):
    """An 8 MiB embedding table in three plans: the library grows by the plans' code, not by
    two more copies of the table."""
    model = bert_with_pooler(vocab=32768)
    single = compiler.compile(model, input_shapes={"input_ids": (1, 32),
                                                   "attention_mask": (1, 32)})
    bucketed = compiler.compile(model, input_shapes={"input_ids": (1, LENGTHS)})
    assert "plans" not in single.info and "buckets" not in single.info
    assert sparsec.load(single.library)._lib.sparsec_num_plans() == 1
    single_size, bucketed_size = single.library.stat().st_size, bucketed.library.stat().st_size
    assert single_size > 8 << 20
    assert bucketed_size < single_size + (single_size - (8 << 20)) * len(LENGTHS)
    assert bucketed_size < 1.5 * single_size


def test_profile_counts_each_plan_apart(compiler):
    module = compiler.load(no_mask_model(), input_shapes={"x": (1, [4, 8], 8)}, profile=True)
    module.run({"x": np.ones((1, 4, 8), np.float32)})
    assert all(layer["ms"] > 0 for layer in module.profile(0))
    assert all(layer["ms"] == 0 for layer in module.profile())  # the longest: never run
    with pytest.raises(InputError, match="plan must be an index below 2"):
        module.profile(2)


@pytest.mark.parametrize("shapes, message", [
    ({"input_ids": (1, [])}, "set of lengths is empty"),
    ({"input_ids": (1, [8, 8])}, "bucket lengths repeat"),
    ({"input_ids": (1, [0, 8])}, "must be positive"),
    ({"input_ids": (1, [8])}, "one length is not a set"),
    ({"input_ids": (1, list(range(1, MAX_BUCKETS + 2)))}, "more than 16"),
    ({"input_ids": ([1, 2], [8, 16])}, "on 2 dimensions"),
    ({"input_ids": (1, [8, 16]), "attention_mask": (1, [8, 32])}, "different bucket lengths"),
    ({"input_ids": (1, [8, 16]), "attention_mask": (1, 16)}, "which the buckets vary"),
])
def test_bad_buckets_are_refused(compiler, shapes, message):
    with pytest.raises(ShapeError, match=message):
        compiler.compile(bert_with_pooler(), input_shapes=shapes)


def test_command_line(tmp_path, monkeypatch, cache_dir, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    assert parse_input_shapes(["input_ids=1x{32,8,16}"]) == {"input_ids": (1, [32, 8, 16])}
    model, library = tmp_path / "bert.onnx", tmp_path / "bert.so"
    onnx.save(bert_with_pooler(), str(model))
    assert main(["compile", str(model), "--target", "generic", "--input-shape",
                 "input_ids=1x{8,16,32}", "-o", str(library), "--report"]) == 0
    out = capsys.readouterr().out
    assert "3 plans for lengths 8, 16, 32" in out and "layers of the longest bucket, 32" in out
    feeds = bert_feeds(11, 3)
    np.save(tmp_path / "input_ids.npy", feeds["input_ids"])
    # the mask, generated, follows the length of the ids given: ones, as bert_feeds' mask
    assert main(["run", str(library), "--input", f"input_ids={tmp_path / 'input_ids.npy'}",
                 "--out", str(tmp_path / "out.npz")]) == 0
    assert "input 'attention_mask': ones int64[1x11]" in capsys.readouterr().out
    hidden, _ = run_onnxruntime(bert_with_pooler(), feeds)
    got = np.load(tmp_path / "out.npz")["last_hidden_state"]
    assert got.shape == hidden.shape and np.max(np.abs(got - hidden)) <= TOLERANCE
    assert main(["info", str(library)]) == 0
    assert "buckets: lengths 8, 16, 32 along 'input_ids' axis 1" in capsys.readouterr().out
    assert main(["benchmark", str(library), "--repeat", "2", "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 2
    assert main(["compile", str(model), "--input-shape", "input_ids=1x{8,8}",
                 "-o", str(library)]) == 1
    assert "bucket lengths repeat" in capsys.readouterr().err


def test_each_bucket_dumps_its_own_ir(compiler, tmp_path):
    compiler.compile(no_mask_model(), input_shapes={"x": (1, [4, 8], 8)}, dump_ir=tmp_path)
    for length in (4, 8):
        text = (tmp_path / f"bucket-{length}" / "00-import.txt").read_text()
        assert f"input  'x': float32[1x{length}x8]" in text
