"""choose_layouts end to end: chains of token-tile kernels hand activations over
feature-major. The kernels do the same arithmetic in the same order either way, so a model
compiled with layouts chosen must give bit-identical outputs to the same model compiled with
every activation row-major -- and both must match onnxruntime within the fp32 bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

import sparsec
from tests.conftest import TARGET_PARAMS, run_onnxruntime
from tests.graphs import model

EPS = float(np.finfo(np.float32).eps)
TOKEN_TARGETS = [p for p in TARGET_PARAMS if p.values[0] in ("x86-avx2", "x86-avx512")]


def chain(rng, m: int, widths: list[int], activations: list[str], bias_shapes: list[str]):
    nodes, inits, last = [], [], "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        keep = np.repeat(rng.random((-(-k // 4), n)) < 0.15, 4, 0)[:k]
        inits.append((f"w{i}", (rng.standard_normal((k, n)) / np.sqrt(k) * keep)
                      .astype(np.float32)))
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"p{i}"]))
        last = f"p{i}"
        if bias_shapes[i]:
            inits.append((f"b{i}", rng.standard_normal(n).astype(np.float32)))
            nodes.append(helper.make_node("Add", [last, f"b{i}"], [f"a{i}"]))
            last = f"a{i}"
        if activations[i]:
            nodes.append(helper.make_node(activations[i], [last], [f"r{i}"]))
            last = f"r{i}"
    return model(nodes, [("x", [m, widths[0]])], [(last, [m, widths[-1]])], inits), last


@pytest.mark.parametrize("target", TOKEN_TARGETS)
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# K = 30 and 23 are no multiple of the 4x1 blocks: the kernel must not read A in place past K.
@example(m=130, widths=[13, 30, 23, 9], activations=["", "Relu", ""], bias_shapes=["N", "", "N"],
         seed=7)
@given(m=st.sampled_from([1, 5, 64, 70, 130]),
       widths=st.lists(st.integers(1, 100), min_size=3, max_size=4),
       activations=st.lists(st.sampled_from(["", "Relu", "Sigmoid"]), min_size=3, max_size=3),
       bias_shapes=st.lists(st.sampled_from(["", "N"]), min_size=3, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_feature_major_chain_is_bit_identical(target, m, widths, activations, bias_shapes,
                                              seed, compiler):
    rng = np.random.default_rng(seed)
    onnx_model, output = chain(rng, m, widths, activations, bias_shapes)
    chosen = compiler.compile(onnx_model, target, force_pattern="4x1")
    plain = compiler.compile(onnx_model, target, force_pattern="4x1", layouts=False)
    assert chosen.graph.to_text().count("layout=feature-major") == len(widths) - 2
    assert "feature-major" not in plain.graph.to_text()
    if not compiler.can_run(target):
        return
    x = rng.standard_normal((m, widths[0])).astype(np.float32)
    got = sparsec.load(chosen.library).run({"x": x})[output]
    assert np.array_equal(got, sparsec.load(plain.library).run({"x": x})[output])
    (expected,) = run_onnxruntime(onnx_model, {"x": x})
    # a loose sanity bound; the exact per-operator bounds live in test_differential
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_graph_outputs_and_other_readers_stay_row_major(compiler):
    rng = np.random.default_rng(0)
    w = [(rng.standard_normal((64, 64)) * (rng.random((64, 64)) < 0.1)).astype(np.float32)
         for _ in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]),  # read by Dense and Relu
             helper.make_node("MatMul", ["h0", "w1"], ["h1"]),  # read by Dense only
             helper.make_node("Relu", ["h0"], ["side"]),
             helper.make_node("MatMul", ["h1", "w2"], ["y"])]  # a graph output
    graph = compiler.compile(model(nodes, [("x", [70, 64])], [("y", [70, 64]),
                                                              ("side", [70, 64])],
                                   [("w0", w[0]), ("w1", w[1]), ("w2", w[2])]),
                             "x86-avx512", force_pattern="4x1").graph
    layouts = {name: t.layout for name, t in graph.tensors.items() if not t.is_constant}
    assert layouts == {"x": "row-major", "h0": "row-major", "h1": "feature-major",
                       "y": "row-major", "side": "row-major"}


def test_generic_target_keeps_row_major(compiler):
    rng = np.random.default_rng(0)
    onnx_model, _ = chain(rng, 8, [16, 16, 16], ["", ""], ["", ""])
    assert "feature-major" not in compiler.compile(onnx_model, "generic").graph.to_text()


@pytest.mark.parametrize("target", TOKEN_TARGETS)
def test_gemm_bias_varying_by_token_in_feature_major_store(target, compiler):
    """A Gemm C that varies along M (and alpha, beta) takes the feature-major store's scalar
    path."""
    rng = np.random.default_rng(5)
    m, widths = 70, [40, 48, 24]
    nodes, inits, last = [], [], "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        keep = np.repeat(rng.random((-(-k // 4), n)) < 0.3, 4, 0)[:k]
        inits += [(f"w{i}", (rng.standard_normal((k, n)) * keep).astype(np.float32)),
                  (f"c{i}", rng.standard_normal((m, n)).astype(np.float32))]
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"c{i}"], [f"g{i}"],
                                      alpha=0.5, beta=2.0))
        last = f"g{i}"
    onnx_model = model(nodes, [("x", [m, widths[0]])], [(last, [m, widths[-1]])], inits)
    chosen = compiler.compile(onnx_model, target, force_pattern="4x1")
    plain = compiler.compile(onnx_model, target, force_pattern="4x1", layouts=False)
    assert chosen.graph.tensors["g0"].layout == "feature-major"
    if not compiler.can_run(target):
        return
    x = rng.standard_normal((m, widths[0])).astype(np.float32)
    got = sparsec.load(chosen.library).run({"x": x})[last]
    assert np.array_equal(got, sparsec.load(plain.library).run({"x": x})[last])
