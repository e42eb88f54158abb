"""Block reordering end to end: reordered models compute what onnxruntime computes on the
original model. Hypothesis draws chains (widths, densities, shuffled block structure or none,
activations, per-channel constants between) and encoders whose value/output projections were
scrambled within heads; every applied permutation must be a bijection (within heads where the
chain needs it) and must not raise the block count of the pattern each weight ends up with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import sparsec
from sparsec.compiler.ops import DENSE
from tests.conftest import TARGET_PARAMS, run_onnxruntime
from tests.graphs import model

ROOT = Path(__file__).resolve().parents[2]
# Sums of at most 96 products in another order (the permutation reorders the consumer's sum).
RTOL, ATOL = 1e-4, 1e-5


def check_records(graph, original_weights: dict):
    for node in graph.nodes:
        record = node.attrs.get("reorder")
        if not record or "permutation" not in record:
            continue
        perm = record["permutation"]
        assert sorted(perm) == list(range(len(perm)))
        weight = graph.tensors[node.inputs[1]]
        pattern = weight.sparsity.pattern
        if pattern != "dense":
            before = pattern.count(original_weights[node.name])[0]
            assert weight.sparsity.block_stats[pattern][0] <= before


def chain_weights(data, k, n, m):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    w1 = rng.standard_normal((k, n)) * (rng.random((k, n)) < data.draw(
        st.floats(0.1, 1.0), label="producer density"))
    density = data.draw(st.floats(0.05, 0.6), label="consumer density")
    if data.draw(st.booleans(), label="shuffled 4x1 blocks"):
        keep = np.repeat(rng.random((n // 4, m)) < density, 4, axis=0)[rng.permutation(n)]
    else:
        keep = rng.random((n, m)) < density
    w2 = rng.standard_normal((n, m)) * keep
    return rng, w1.astype(np.float32), w2.astype(np.float32)


@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(k=st.integers(4, 40), n=st.sampled_from([16, 32, 48, 96]), m=st.integers(1, 40),
       activation=st.sampled_from(["Relu", "Tanh", "Sigmoid"]), scaled=st.booleans(),
       data=st.data())
def test_reordered_chains_match_onnxruntime(target, k, n, m, activation, scaled, data,
                                            compiler):
    rng, w1, w2 = chain_weights(data, k, n, m)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node(activation, ["hb"], ["a"])]
    constants = [("w1", w1), ("b1", rng.standard_normal(n).astype(np.float32)), ("w2", w2)]
    if scaled:
        nodes.append(helper.make_node("Mul", ["a", "s"], ["a2"]))
        constants.append(("s", rng.standard_normal(n).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", ["a2" if scaled else "a", "w2"], ["y"],
                                  name="down"))
    onnx_model = model(nodes, [("x", [5, k])], [("y", [5, m])], constants)
    result = compiler.compile(onnx_model, target)
    check_records(result.graph, {"up": w1, "down": w2})
    if not compiler.can_run(target):
        return
    x = rng.standard_normal((5, k)).astype(np.float32)
    got = sparsec.load(result.library).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_onnxruntime(onnx_model, {"x": x})[0],
                               rtol=RTOL, atol=ATOL)


def tiny_bert_module():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scramble_within_heads(onnx_model, heads: int, rng):
    """Permute the value projection's columns (and bias) and the output projection's rows by
    one random permutation inside each head: the same function, its 4x1 blocks broken up."""
    inits = {t.name: t for t in onnx_model.graph.initializer}
    value = next(n for n in inits if n.endswith("attention.self.value.weight"))
    bias = value.replace(".weight", ".bias")
    output = next(n for n in inits if n.endswith("attention.output.dense.weight"))
    width = numpy_helper.to_array(inits[value]).shape[1]
    size = width // heads
    perm = np.concatenate([h * size + rng.permutation(size) for h in range(heads)])
    for name, change in ((value, lambda a: a[:, perm]), (bias, lambda a: a[perm]),
                         (output, lambda a: a[perm])):
        array = np.ascontiguousarray(change(numpy_helper.to_array(inits[name])))
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    return onnx_model


@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Heads of 16 and 24: at a hidden size of 8 the cost model may find a restored weight no
# faster (no permutation: heads=1, head=8, seed=246 on x86-avx512), which is right, but not
# what this test is about.
@given(heads=st.integers(1, 4), head=st.sampled_from([16, 24]), seed=st.integers(0, 999))
@example(heads=1, head=16, seed=247)
def test_value_and_output_projections_reorder_within_heads(target, heads, head, seed, compiler):
    tiny_bert = tiny_bert_module()
    hidden = heads * head
    onnx_model = scramble_within_heads(
        tiny_bert.tiny_bert(seed, hidden=hidden, num_heads=heads, ffn=2 * hidden, layers=1,
                            vocab=64, seq=16), heads, np.random.default_rng(seed))
    result = compiler.compile(onnx_model, target)
    output = next(n for n in result.graph.nodes
                  if n.op == DENSE and "attention.output.dense" in n.inputs[1])
    record = output.attrs["reorder"]
    assert record["kind"] == "attention value/output"
    perm = np.asarray(record["permutation"])  # the scrambled 4x1 blocks are worth restoring
    assert (perm // head == np.arange(hidden) // head).all(), "stays within each head"
    restored = result.graph.tensors[output.inputs[1]].sparsity
    # Every 4x1 block full again; the pattern stays the cost model's choice (a restored weight
    # of one head can be cheaper in 4x4 blocks: heads=1, head=16, seed=247 on generic).
    assert restored.block_stats["4x1"][1] == 1.0 and restored.pattern != "dense"
    if not compiler.can_run(target):
        return
    feeds = tiny_bert.tiny_bert_inputs(seed, vocab=64, seq=16, padded=3)
    got = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, run_onnxruntime(onnx_model, feeds)[0], rtol=0, atol=1e-4)
