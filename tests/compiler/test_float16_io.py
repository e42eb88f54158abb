"""float16 graph inputs and outputs: the library takes and returns IEEE binary16 and computes
in float32 inside (compiler/float16.py casts at the edge; runtime_c/sparsec_model.h converts).

The conversions are checked exhaustively against numpy's through compiled Cast models; whole
models against onnxruntime running the same float16 model, and bit for bit against sparsec's
own float32 computation of it rounded once."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_onnxruntime

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TARGETS = ("generic", "native")
HALF_ULP = 2.0**-11
"""float16's relative rounding error bound (11-bit significand, round to nearest)."""


def cast_model(source: int, target: int, count: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=target)], "cast",
        [helper.make_tensor_value_info("x", source, [count])],
        [helper.make_tensor_value_info("y", target, [count])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def every_half() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def hard_floats() -> np.ndarray:
    """float32 values where float32 -> float16 rounding can go wrong: every float16, the ties
    halfway between neighbours (both directions of ties-to-even), one float32 ulp either side
    of each tie, the overflow boundary (65504, 65520), the subnormal and underflow
    boundaries, float32 subnormals, NaNs with payloads, infinities, and random bit patterns."""
    halves = every_half()
    finite = np.sort(np.unique(halves[np.isfinite(halves)].astype(np.float32)))
    ties = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    ties = np.concatenate([ties, np.float32([65520.0, -65520.0])])
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)),
                           np.nextafter(ties, np.float32(-np.inf))])
    edges = np.float32([65504, 65519.996, 65520, 65536, 3.4e38, 2**-14, 2**-24, 2**-25,
                        2**-26, 1.5 * 2**-25, 2**-25 * (1 + 2**-23), 2**-149, 2**-126,
                        1e-30, 0.0, -0.0, np.inf, -np.inf])
    payloads = (np.uint32([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000, 0x7F802000,
                           0x7F801FFF]) | np.uint32([0, 0x80000000])[:, None]).ravel()
    random = np.random.default_rng(0).integers(0, 1 << 32, 1 << 20, dtype=np.uint64)
    return np.concatenate([halves.astype(np.float32), ties, near, edges, -edges,
                           payloads.view(np.float32),
                           random.astype(np.uint32).view(np.float32)])


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit for bit, except that a NaN need only be a NaN of the same sign (numpy and F16C
    hardware disagree on quieting a signalling NaN's payload)."""
    assert actual.dtype == expected.dtype
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    np.testing.assert_array_equal(np.signbit(actual[nan]), np.signbit(expected[nan]))
    bits = {2: np.uint16, 4: np.uint32}[expected.itemsize]
    wrong = np.flatnonzero(actual[~nan].view(bits) != expected[~nan].view(bits))
    assert wrong.size == 0, (f"{wrong.size} conversions differ, e.g. "
                             f"{expected[~nan][wrong[:5]]} -> {actual[~nan][wrong[:5]]}")


@pytest.mark.parametrize("target", TARGETS)
def test_every_half_widens_exactly(target, compiler):
    x = every_half()
    module = compiler.load(cast_model(TensorProto.FLOAT16, TensorProto.FLOAT, x.size), target)
    assert module.inputs[0].dtype == np.float16
    assert_same_floats(module.run({"x": x})["y"], x.astype(np.float32))


@pytest.mark.parametrize("target", TARGETS)
def test_floats_round_to_nearest_even_half(target, compiler):
    x = hard_floats()
    module = compiler.load(cast_model(TensorProto.FLOAT, TensorProto.FLOAT16, x.size), target)
    assert module.outputs[0].dtype == np.float16
    with np.errstate(over="ignore"):  # numpy warns on the overflows it rightly makes inf
        expected = x.astype(np.float16)
    assert_same_floats(module.run({"x": x})["y"], expected)


def mlp(hidden=32) -> onnx.ModelProto:
    """A float16 MLP, inputs and outputs float16: MatMul + bias -> Relu -> MatMul + bias."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((16, hidden)) / 4).astype(np.float16)
    b1 = rng.standard_normal(hidden).astype(np.float16)
    w2 = (rng.standard_normal((hidden, 8)) / 4).astype(np.float16)
    b2 = rng.standard_normal(8).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]),
             helper.make_node("Add", ["h1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
             helper.make_node("Add", ["h2", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                     (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def as_float32_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its float16 inputs and outputs declared float32: what sparsec
    computes inside a float16-IO model, before the boundary's one rounding."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


@pytest.mark.parametrize("target", TARGETS)
def test_mlp_takes_and_returns_float16(target, compiler):
    """onnxruntime rounds 4 activations to float16 (each MatMul and Add: relative 2**-11 of
    values no larger than the largest intermediate), sparsec rounds once at the output:
    the difference is at most 5 such roundings of the largest intermediate magnitude."""
    model = mlp()
    x = np.random.default_rng(4).standard_normal((4, 16)).astype(np.float16)
    module = compiler.load(model, target)
    assert [t.dtype for t in module.inputs + module.outputs] == [np.float16, np.float16]
    got = module.run({"x": x})["y"]
    assert got.dtype == np.float16
    inside = compiler.load(as_float32_io(model), target).run({"x": x.astype(np.float32)})["y"]
    np.testing.assert_array_equal(got.view(np.uint16), inside.astype(np.float16).view(np.uint16))

    (expected,) = run_onnxruntime(model, {"x": x})
    assert expected.dtype == np.float16
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    h1 = x.astype(np.float64) @ w["w1"]
    largest = max(np.abs(h1).max(), np.abs(h1 + w["b1"]).max(), np.abs(inside).max(),
                  np.abs(np.maximum(h1 + w["b1"], 0) @ w["w2"]).max())
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64)).max()
    assert difference <= 5 * HALF_ULP * largest


@pytest.fixture(scope="module")
def bert16():
    pytest.importorskip("onnxruntime.transformers.float16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(SAMPLES / "tiny_bert.onnx"))
    feeds = {name: np.load(SAMPLES / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    return (convert_float_to_float16(model), convert_float_to_float16(model, keep_io_types=True),
            feeds)


BERT_TOLERANCE = 21 * HALF_ULP
"""Of the output range. onnxruntime rounds some 20 activations to float16 on the way from
embedding to output (each relative 2**-11, re-normalised by LayerNorm, so relative to the
range), sparsec one, at the output: 21 * 2**-11 is 1 % of the range (measured 0.04 %)."""


@pytest.mark.parametrize("target", TARGETS)
def test_bert_float16_output(target, bert16, compiler):
    """int64 inputs stay int64, the hidden states come back float16."""
    half_io, float_io, feeds = bert16
    module = compiler.load(half_io, target)
    assert [t.dtype for t in module.inputs] == [np.int64, np.int64]
    got = module.run(feeds)["last_hidden_state"]
    assert got.dtype == np.float16
    inside = compiler.load(float_io, target).run(feeds)["last_hidden_state"]
    np.testing.assert_array_equal(got.view(np.uint16), inside.astype(np.float16).view(np.uint16))

    (expected,) = run_onnxruntime(half_io, feeds)
    assert expected.dtype == np.float16
    expected = expected.astype(np.float32)
    difference = np.abs(got.astype(np.float32) - expected).max()
    assert difference <= BERT_TOLERANCE * np.ptp(expected)


def test_float16_in_the_model_header(compiler):
    result = compiler.compile(mlp(), "generic")
    header = Path(result.library).with_suffix(".h").read_text()
    assert '#define SPARSEC_MODEL_INPUT0_DTYPE "float16"' in header
    assert "typedef uint16_t sparsec_model_output0_t; /* IEEE binary16 bits */" in header
    assert result.info["inputs"][0]["dtype"] == result.info["outputs"][0]["dtype"] == "float16"


def small_cnn() -> onnx.ModelProto:
    """x [1, 3, 12, 12] -> 3x3 conv + BatchNormalization + Relu -> depthwise 3x3 stride 2 ->
    1x1 conv + Relu -> global average pool -> flatten -> Gemm: the ops of a MobileNet, float32
    throughout, for the converter to halve. Weights scaled to keep activations near 1."""
    rng = np.random.default_rng(3)

    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = {"w1": weight(8, 3, 3, 3), "scale": rng.random(8).astype(np.float32) + 0.5,
             "shift": rng.standard_normal(8).astype(np.float32), "mean": np.zeros(8, np.float32),
             "var": np.ones(8, np.float32), "wd": weight(8, 1, 3, 3), "w2": weight(16, 8, 1, 1),
             "b2": rng.standard_normal(16).astype(np.float32), "wf": weight(16, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"],
                              ["b1"]),
             helper.make_node("Relu", ["b1"], ["r1"]),
             helper.make_node("Conv", ["r1", "wd"], ["d"], pads=[1, 1, 1, 1], strides=[2, 2],
                              group=8),
             helper.make_node("Conv", ["d", "w2", "b2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"])]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", TARGETS)
def test_cnn_halved_keeping_float_io_runs(target, compiler):
    """convert_float_to_float16(keep_io_types=True) casts each float input to float16 with a
    node it appends after the nodes that read it: out of order for onnx.checker, loaded by
    onnxruntime, which sorts. sparsec sorts too (compiler/node_order.py), then runs the
    halved weights in float32. onnxruntime rounds the activations to float16 after each of
    its 7 ops, sparsec never: 8 half ulps of the output range bounds the difference (relative
    2**-11 a rounding, each carried to the output at most at full size; measured 0.02)."""
    pytest.importorskip("onnxruntime.transformers.float16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    halved = convert_float_to_float16(small_cnn(), keep_io_types=True)
    x = np.random.default_rng(4).standard_normal((1, 3, 12, 12)).astype(np.float32)
    got = compiler.load(halved, target).run({"x": x})["y"]
    (expected,) = run_onnxruntime(halved, {"x": x})
    assert got.dtype == expected.dtype == np.float32
    assert np.abs(got - expected).max() <= 8 * HALF_ULP * np.ptp(expected)
