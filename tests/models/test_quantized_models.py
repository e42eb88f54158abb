"""Whole models compiled with --quantize dynamic, against the same quantization written as ONNX
operators (DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add -> Relu per layer,
weights quantized by tests/quantization.py), evaluated by the exact reference
(tests/quantization.py) and, where its int8 is exact on this host, by onnxruntime
(tests/conftest.py's int8_oracles; the test ids say which). Each computes exact integer sums and
the same float32 steps in the same order, so the outputs must be equal, bit for bit, on every
target the host executes (others are compiled only)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.compiler.patterns import BITMASK
from tests.conftest import TARGET_PARAMS, assert_int8_equal, int8_expected, int8_oracles
from tests.graphs import model
from tests.quantization import quantize_weights


def mlp(rng, m: int, widths: list[int], densities: list[float], relu: list[bool],
        bias: list[bool], block: tuple[int, int]):
    """The fp32 model sparsec compiles, and its quantized twin for onnxruntime."""
    nodes, inits, q_nodes, q_inits = [], [], [], []
    last = q_last = "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        rows, cols = block
        keep = rng.random((-(-k // rows), -(-n // cols))) < densities[i]
        keep = np.repeat(np.repeat(keep, rows, 0), cols, 1)[:k, :n]
        w = (rng.standard_normal((k, n)) / np.sqrt(k) * keep).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"p{i}"]))
        inits.append((f"w{i}", w))
        last = f"p{i}"
        wq, ws = quantize_weights(w)
        q_nodes += [
            helper.make_node("DynamicQuantizeLinear", [q_last], [f"xq{i}", f"xs{i}", f"xz{i}"]),
            helper.make_node("MatMulInteger", [f"xq{i}", f"wq{i}", f"xz{i}"], [f"acc{i}"]),
            helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"xs{i}", f"ws{i}"], [f"s{i}"]),
            helper.make_node("Mul", [f"accf{i}", f"s{i}"], [f"q{i}"])]
        q_inits += [numpy_helper.from_array(wq, f"wq{i}"), numpy_helper.from_array(ws, f"ws{i}")]
        q_last = f"q{i}"
        if bias[i]:
            nodes.append(helper.make_node("Add", [last, f"b{i}"], [f"a{i}"]))
            q_nodes.append(helper.make_node("Add", [q_last, f"b{i}"], [f"qa{i}"]))
            inits.append((f"b{i}", b))
            q_inits.append(numpy_helper.from_array(b, f"b{i}"))
            last, q_last = f"a{i}", f"qa{i}"
        if relu[i]:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            q_nodes.append(helper.make_node("Relu", [q_last], [f"qr{i}"]))
            last, q_last = f"r{i}", f"qr{i}"
    fp32 = model(nodes, [("x", [m, widths[0]])], [(last, [m, widths[-1]])], inits)
    graph = helper.make_graph(
        q_nodes, "quantized", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [m, widths[0]])],
        [helper.make_tensor_value_info(q_last, TensorProto.FLOAT, [m, widths[-1]])], q_inits)
    return fp32, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@st.composite
def mlps(draw):
    layers = draw(st.integers(1, 3))
    return dict(m=draw(st.integers(1, 70)),
                widths=draw(st.lists(st.integers(1, 90), min_size=layers + 1,
                                     max_size=layers + 1)),
                densities=draw(st.lists(st.sampled_from([0.05, 0.2, 0.5, 1.0]),
                                        min_size=layers, max_size=layers)),
                relu=draw(st.lists(st.booleans(), min_size=layers, max_size=layers)),
                bias=draw(st.lists(st.booleans(), min_size=layers, max_size=layers)),
                block=draw(st.sampled_from([(1, 1), (4, 1), (1, 16)])),
                seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles()])  # codes reach 127
@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mlps())
@example(case=dict(m=128, widths=[96, 160, 64], densities=[0.1, 1.0], relu=[True, False],
                   bias=[True, True], block=(4, 1), seed=1))  # one sparse, one dense layer
def test_quantized_mlp_is_exact(target, with_onnxruntime, case, compiler):
    case = dict(case)
    rng = np.random.default_rng(case.pop("seed"))
    fp32, quantized = mlp(rng, **case)
    result = compiler.compile(fp32, target, quantize="dynamic", mixed_precision=False)
    assert all(layer["weight_dtype"] == "int8" for layer in result.info["layers"]
               if "shape" in layer)
    if not compiler.can_run(target):
        return
    x = rng.standard_normal((case["m"], case["widths"][0])).astype(np.float32)
    actual = list(sparsec.load(result.library).run({"x": x}).values())
    assert_int8_equal(actual, int8_expected(quantized, {"x": x}, with_onnxruntime))


def test_quantized_kernels_are_chosen_by_int8_cost(compiler):
    """A 90 % sparse layer in 4x1 blocks takes the sparse int8 kernel, a dense one the dense
    int8 kernel; the report says int8 for both."""
    rng = np.random.default_rng(0)
    fp32, _ = mlp(rng, 16, [64, 128, 32], [0.1, 1.0], [True, False], [True, True], (4, 1))
    layers = [layer for layer in compiler.compile(fp32, "generic", quantize="dynamic",
                                                  mixed_precision=False)
              .info["layers"] if "shape" in layer]
    assert [layer["pattern"] for layer in layers] == ["4x1", "dense"]
    assert all(layer["kernel"].startswith("sparsec_qs8_dense") for layer in layers)


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles()])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] == "x86-amx"])
def test_x86_amx_bitmask_int8_is_exact(target, with_onnxruntime, compiler):
    """x86-amx's int8 BITMASK kernel (dense tiles expanded from a bit mask and the nonzeros),
    forced: the cost model keeps int8 weights dense on the cores measured, where streaming a
    byte per element costs less than the products (tests/compiler/passes/test_detect_sparsity.py). A
    1024 x 2304 layer at 60 % unstructured sparsity, past the 2 MiB cache, then a small one.
    Bit for bit as the exact reference (and onnxruntime where its int8 is exact)."""
    rng = np.random.default_rng(3)
    fp32, quantized = mlp(rng, 40, [1024, 2304, 48], [0.4, 1.0], [True, False], [True, True],
                          (1, 1))
    result = compiler.compile(fp32, target, quantize="dynamic", force_pattern=BITMASK)
    layers = [layer for layer in result.info["layers"] if "shape" in layer]
    assert [layer["pattern"] for layer in layers] == [BITMASK, BITMASK]
    assert all(layer["kernel"].endswith("_bitmask__amx") for layer in layers)
    if not compiler.can_run(target):
        return
    x = rng.standard_normal((40, 1024)).astype(np.float32)
    actual = list(sparsec.load(result.library).run({"x": x}).values())
    assert_int8_equal(actual, int8_expected(quantized, {"x": x}, with_onnxruntime))


def test_quantize_refuses_unknown_mode(compiler):
    rng = np.random.default_rng(0)
    fp32, _ = mlp(rng, 2, [8, 8], [1.0], [False], [False], (1, 1))
    with pytest.raises(sparsec.SparsecError, match="unknown quantization 'static'"):
        compiler.compile(fp32, "generic", quantize="static")
