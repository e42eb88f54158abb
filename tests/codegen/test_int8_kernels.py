"""Kernel tests for the int8 Dense rows (`--quantize dynamic`): bit-exact against a numpy
integer reference of the same quantization (tests/quantization.py).

Each row gets one-node graphs (MatMul, maybe a bias Add and an exact activation) compiled with
the row's storage forced. Integer sums are exact and the float steps are the same IEEE
operations in the same order, so the comparison is equality, not a tolerance.

Rows run natively where the host has their ISA. AVX-VNNI rows on a host with AVX-512 VNNI but
without AVX-VNNI run through the same instruction's EVEX encoding (`evex-twin`: the kernel's
source is unchanged, see runtime_c/sparsec_avx2.h); ARM rows run under qemu-user, all of a
row's cases in one emulator process; elsewhere they are compile-only. The test ids say which.

The arm-neon library carries the SDOT kernel too and calls it where the CPU has the dot
product, so its own row (the one without SDOT) is built with that feature hidden and runs on
an emulated Cortex-A53, which lacks it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

import sparsec
from sparsec.codegen import targets
from sparsec.codegen.kernels import KERNELS, KernelSpec
from sparsec.compiler.ir import FEATURE_MAJOR
from sparsec.compiler.ops import DENSE
from sparsec.errors import PortableKernelWarning
from tests.graphs import model
from tests.quantization import dense_int8
from tests.runs import Runs

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ROWS = [k for k in KERNELS if k.op == DENSE and k.weight_dtype == "int8"]
EVEX_TWIN_FLAGS = ("-mavx512vl", "-mavx512vnni", "-mno-avxvnni",
                   "-DSPARSEC_AVXVNNI_AS_AVX512VL")


CLIP = (-0.5, 0.75)


def compile_row(compiler, row: KernelSpec, onnx_model):
    """The row's storage forced, int8, warnings as errors; AVX-VNNI rows as their EVEX twin
    where the host runs that; a row that a target dispatches away from with those features
    hidden, so that the row itself runs."""
    target = target_of(row)
    twin = EVEX_TWIN_FLAGS if mode_of(row) == "evex-twin" else ()
    hidden = sum(1 << targets.FEATURE_BITS[d.feature] for d in target.dispatch)
    hide = (f"-DSPARSEC_HIDE_FEATURES={hidden}",) if hidden else ()
    return compiler.compile(onnx_model, target.name, force_pattern=row.pattern,
                            quantize="dynamic", extra_cflags=("-Werror", *twin, *hide))


def target_of(row: KernelSpec) -> targets.Target:
    return next(t for t in targets.TARGETS.values() if row.isa in t.isas)


def mode_of(row: KernelSpec) -> str:
    target = target_of(row)
    if targets.can_execute(target):
        return "native"
    if targets.execution_mode(target) == "emulated":  # another architecture, under qemu
        return "emulated"
    have = targets.host_features()
    if row.isa == "avxvnni" and targets.host_arch() == "x86_64" and {
            "avx2", "fma", "avx512vl", "avx512vnni"} <= have:
        return "evex-twin"
    return "compile-only"


def runs_for(row: KernelSpec, compiler, threads: int) -> Runs:
    target = target_of(row)
    # An emulated CPU without the features the library would dispatch to, as a second guard
    no_dispatch_cpu = {"aarch64": "cortex-a53"}.get(target.arch) if target.dispatch else None
    return Runs(target, compiler.cache_dir, cpu=no_dispatch_cpu, threads=threads)


PARAMS = [pytest.param(row, id=f"{row.symbol}:{mode_of(row)}") for row in ROWS]


@dataclass(frozen=True)
class Case:
    name: str
    m: int
    k: int
    n: int
    density: float  # probability that a 4x1 group is kept
    bias: bool = True
    activation: str = ""
    inputs: str = "normal"  # normal, positive, negative, zero, wide, top (every code 255)
    seed: int = 0
    weights: str = "normal"  # normal, or extreme: every kept weight ±max, codes ±127


def weight_for(case: Case, rng) -> np.ndarray:
    kb = -(-case.k // 4)
    keep = np.repeat(rng.random((kb, case.n)) < case.density, 4, 0)[:case.k]
    w = rng.standard_normal((case.k, case.n))
    if case.weights == "extreme":
        w = np.where(np.arange(case.n) % 3 == 0, 1.0, -1.0) * np.ones_like(w)
    return (w * keep).astype(np.float32)


def inputs_for(case: Case, rng) -> np.ndarray:
    x = rng.standard_normal((case.m, case.k)).astype(np.float32)
    return {"normal": x, "positive": np.abs(x) + 0.25, "negative": -np.abs(x) - 0.25,
            "zero": np.zeros_like(x), "wide": x * np.float32(1e4),
            "top": np.ones_like(x)}[case.inputs]


def one_node_model(case: Case, weight, bias):
    nodes, inits, last = [helper.make_node("MatMul", ["x", "w"], ["p"])], [("w", weight)], "p"
    if case.bias:
        nodes.append(helper.make_node("Add", ["p", "b"], ["a"]))
        inits.append(("b", bias))
        last = "a"
    if case.activation:
        extra = ["lo", "hi"] if case.activation == "Clip" else []
        inits += list(zip(extra, (np.float32(b) for b in CLIP)))
        nodes.append(helper.make_node(case.activation, [last, *extra], ["y"]))
        last = "y"
    return model(nodes, [("x", [case.m, case.k])], [(last, [case.m, case.n])], inits)


def reference(case: Case, x, weight, bias) -> np.ndarray:
    y = dense_int8(x, weight, bias if case.bias else None)
    if case.activation == "Relu":
        return np.maximum(y, np.float32(0))
    if case.activation == "Clip":
        return np.minimum(np.maximum(y, np.float32(CLIP[0])), np.float32(CLIP[1]))
    return y


SIZES = st.one_of(st.sampled_from([1, 3, 4, 5, 16, 17, 33, 64, 65]), st.integers(1, 70))


@st.composite
def cases(draw) -> Case:
    return Case("drawn", draw(SIZES), draw(SIZES), draw(SIZES),
                density=draw(st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]),
                                       st.floats(0.0, 1.0))),
                bias=draw(st.booleans()), activation=draw(st.sampled_from(["", "Relu", "Clip"])),
                inputs=draw(st.sampled_from(["normal", "normal", "positive", "negative", "wide"])),
                seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("row", PARAMS)
def test_int8_row_matches_integer_reference(row: KernelSpec, compiler):
    """Natively each case runs as drawn; under qemu a row's cases run in one batch once
    hypothesis has drawn them all (no shrinking there)."""
    # 2 threads: a tile per thread when M spans two token tiles, split by columns otherwise
    runs = runs_for(row, compiler, threads=2)

    @settings(max_examples=8, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=cases())
    @example(case=Case("k_eq_1", m=5, k=1, n=17, density=1.0))
    @example(case=Case("k_tail", m=4, k=35, n=16, density=0.5, activation="Relu"))
    @example(case=Case("n_tail", m=4, k=64, n=37, density=0.5))
    @example(case=Case("empty_columns", m=5, k=49, n=20, density=0.05))
    @example(case=Case("all_zero_weight", m=6, k=20, n=20, density=0.0, activation="Clip"))
    @example(case=Case("all_zero_input", m=6, k=20, n=20, density=1.0, inputs="zero"))
    @example(case=Case("positive_input_zero_point_0", m=9, k=70, n=35, density=0.7,
                       inputs="positive"))
    @example(case=Case("negative_input_zero_point_255", m=9, k=70, n=35, density=0.7,
                       inputs="negative"))
    @example(case=Case("full_token_tiles", m=130, k=130, n=35, density=0.3,
                       activation="Relu"))
    @example(case=Case("deep_k_halves_the_tile", m=70, k=1100, n=20, density=0.3))
    # Codes 255 against weight codes ±127: every pair of products is ±64770, past int16, so
    # a kernel that summed pairs in int16 (VPMADDUBSW on AVX2) would saturate. Full tiles
    # (the vector quantizer) and a ragged one (the scalar quantizer).
    @example(case=Case("pairs_past_int16", m=70, k=68, n=24, density=1.0, weights="extreme",
                       inputs="top"))
    @example(case=Case("pairs_past_int16_sparse", m=40, k=66, n=19, density=0.5,
                       weights="extreme", inputs="top", bias=False))
    def check(case: Case):
        rng = np.random.default_rng(case.seed)
        weight = weight_for(case, rng)
        bias = rng.standard_normal(case.n).astype(np.float32)
        x = inputs_for(case, rng)
        result = compile_row(compiler, row, one_node_model(case, weight, bias))
        (layer,) = result.info["layers"]
        assert layer["kernel"] == row.symbol, layer["reason"]
        assert layer["weight_dtype"] == "int8"
        runs.submit(result, {"x": x}, functools.partial(compare, case, x, weight, bias),
                    label=repr(case))

    check()
    runs.flush()


def compare(case: Case, x, weight, bias, outputs: dict) -> None:
    (actual,) = outputs.values()
    expected = reference(case, x, weight, bias)
    differ = actual != expected
    assert not differ.any(), (
        f"{case.name}: {int(differ.sum())} of {differ.size} outputs differ, first at "
        f"{np.argwhere(differ)[0].tolist()}: {actual[differ][0]!r} != {expected[differ][0]!r}")


def patch_rows(x: np.ndarray, kernel: int) -> np.ndarray:
    """[H*W, kernel*kernel*C] of x [1, C, H, W] zero-padded to keep its size: the patches
    of a stride-1 conv, tap-major as lower_conv's weight rows."""
    _n, c, h, w = x.shape
    pad = kernel // 2
    padded = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    taps = [padded[:, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)]
    return np.stack(taps).reshape(kernel * kernel * c, h * w).T


@pytest.mark.parametrize("row", PARAMS)
def test_int8_convs_match_the_integer_reference(row: KernelSpec, compiler):
    """A 3x3 conv with a Relu, then a 1x1 conv, lowered to int8 Dense layers on the row: 9 x
    13 = 117 pixels (whole token tiles and a partial one), read from the patch matrix
    transposed to rows and written row-major (no int8 row reads or writes channels-first).
    Bit-exact against the integer reference, chained: the second conv quantizes the first's
    float output, which the reference computes with the same IEEE operations in the same
    order."""
    rng = np.random.default_rng(7)
    c, m1, m2, h, w = 5, 11, 6, 9, 13
    w1 = (rng.standard_normal((m1, c, 3, 3)) * (rng.random((m1, c, 3, 3)) < 0.6))
    w2 = rng.standard_normal((m2, m1, 1, 1))
    b1, b2 = rng.standard_normal(m1), rng.standard_normal(m2)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    inits = [(name, value.astype(np.float32))
             for name, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    result = compile_row(compiler, row, model(nodes, [("x", [1, c, h, w])],
                                              [("y", [1, m2, h, w])], inits))
    assert [layer["kernel"] for layer in result.info["layers"]
            if layer["op"] == DENSE] == [row.symbol] * 2
    dense = [node for node in result.graph.nodes if node.op == DENSE]
    assert all(result.graph.tensors[name].layout != FEATURE_MAJOR
               for node in dense for name in (node.inputs[0], node.outputs[0])), row

    first = dense_int8(patch_rows(x, 3), inits[0][1].transpose(2, 3, 1, 0).reshape(-1, m1),
                       inits[1][1])
    second = dense_int8(np.maximum(first, np.float32(0)), inits[2][1][:, :, 0, 0].T,
                        inits[3][1])
    expected = np.ascontiguousarray(second.T).reshape(1, m2, h, w)

    def equal(outputs):
        np.testing.assert_array_equal(outputs["y"], expected)

    runs = runs_for(row, compiler, threads=2)
    runs.submit(result, {"x": x}, equal, label=row.symbol)
    runs.flush()


@pytest.mark.parametrize("row", [p for p in PARAMS if "compile-only" not in p.id])
def test_nan_and_inf_inputs_stay_defined(row: KernelSpec, compiler):
    """NaN and inf are outside int8's range: the result is unspecified (as in onnxruntime),
    but the kernel must not reach C's undefined float-to-int conversion or crash."""
    case = Case("nan", m=70, k=68, n=20, density=0.5)
    rng = np.random.default_rng(3)
    x = inputs_for(case, rng)
    x[3, 5], x[10, 7], x[69, 67] = np.nan, np.inf, -np.inf
    result = compile_row(compiler, row,
                         one_node_model(case, weight_for(case, rng), np.zeros(20, "f4")))
    runs = runs_for(row, compiler, threads=1)
    runs.submit(result, {"x": x}, check_shape, label=case.name)
    runs.flush()


def check_shape(outputs: dict) -> None:
    (actual,) = outputs.values()
    assert actual.shape == (70, 20)


def imported_int8_mlp(tmp_path, k: int, n: int, m: int):
    """An MLP through onnxruntime's quantize_dynamic (int8 weights, as exporters ship them),
    its weight codes then set to -128 in some columns and -127 in others: codes that the
    compiler's own quantization never makes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.graphs import mlp

    source, target = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(mlp(k=k, n=n, m=m, density=1.0, seed=7), str(source))
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    quantized = onnx.load(str(target))
    (codes,) = [t for t in quantized.graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    values = onnx.numpy_helper.to_array(codes).copy()
    values[:, :3] = -128
    values[::2, 3:6] = -127
    codes.CopyFrom(onnx.numpy_helper.from_array(values, codes.name))
    return quantized


@pytest.mark.parametrize("row", [p for p in PARAMS if "compile-only" not in p.id])
def test_imported_codes_of_minus_128_against_codes_of_255(row: KernelSpec, compiler, tmp_path):
    """Weight codes -128 and -127 against activation codes 255 (each row of x holds the
    tensor's maximum in places): pairs of products reach 2 * 255 * 128, past int16, on every
    row. Against onnx's reference evaluator, whose MatMulInteger sums in exact integers (and
    onnxruntime's own AVX2 kernel may saturate on a host without VNNI)."""
    from onnx.reference import ReferenceEvaluator

    model = imported_int8_mlp(tmp_path, k=72, n=24, m=40)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((40, 72)).astype(np.float32)
    x[:, ::3] = x.max()
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    result = compile_row(compiler, row, model)
    (layer,) = result.info["layers"]
    assert layer["kernel"] == row.symbol, layer.get("reason")
    runs = runs_for(row, compiler, threads=2)
    runs.submit(result, {"x": x}, functools.partial(equal_to, expected), label="minus_128")
    runs.flush()


def equal_to(expected, outputs: dict) -> None:
    (actual,) = outputs.values()
    np.testing.assert_array_equal(actual, expected)


AVX2_ROWS = [k for k in ROWS if k.isa == "avx2"]


def test_x86_avx2_runs_int8_on_avx2_rows_without_a_portable_warning(compiler):
    """Every int8 pattern the AVX-VNNI target has a kernel for, x86-avx2 has one too."""
    vnni = {k.pattern for k in ROWS if k.isa == "avxvnni"}
    assert {k.pattern for k in AVX2_ROWS} == vnni
    case = Case("mixed", m=8, k=64, n=16, density=0.3)
    rng = np.random.default_rng(0)
    onnx_model = one_node_model(case, weight_for(case, rng), np.zeros(16, "f4"))
    for pattern in sorted(vnni):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PortableKernelWarning)
            result = compiler.compile(onnx_model, "x86-avx2", quantize="dynamic",
                                      force_pattern=pattern)
        (layer,) = result.info["layers"]
        assert layer["kernel"].endswith("__avx2") and "portable" not in layer, layer


def test_tiny_bert_int8_on_x86_avx2_equals_the_portable_int8_kernels(compiler, monkeypatch):
    """The sample encoder with --quantize dynamic on x86-avx2, whole: its int8 layers on the
    AVX2 rows, and again with those rows withheld, on the portable kernels (exact integer sums,
    tested above against the integer reference); every fp32 layer is the same code in both,
    so the outputs must be equal bit for bit. (Against onnxruntime the whole model agrees
    only to a tolerance: tests/models/test_tiny_bert.py.) The withheld build also shows the
    warning a portable matrix product gets."""
    import onnx

    from sparsec.codegen import kernels

    model = onnx.load(str(SAMPLES / "tiny_bert.onnx"))
    feeds = {name: np.load(SAMPLES / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    fast = compiler.compile(model, "x86-avx2", quantize="dynamic", mixed_precision=False)
    int8 = [layer for layer in fast.info["layers"] if layer.get("weight_dtype") == "int8"]
    assert len(int8) == 12 and all(layer["kernel"].endswith("__avx2") for layer in int8)
    monkeypatch.setattr(kernels, "KERNELS", [k for k in kernels.KERNELS if k not in AVX2_ROWS])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PortableKernelWarning)
        portable = compiler.compile(model, "x86-avx2", quantize="dynamic",
                                    mixed_precision=False)
    messages = [str(w.message) for w in caught if w.category is PortableKernelWarning]
    assert len(messages) == 12
    assert ("layer '/encoder.layer.0.attention.self.query/MatMul': int8 Dense runs portable C "
            "on x86-avx2: no AVX2 kernel for int8 Dense") in messages[0]
    assert all(layer["kernel"].endswith("__scalar") and "portable" in layer
               for layer in portable.info["layers"] if layer.get("weight_dtype") == "int8")
    if not compiler.can_run("x86-avx2"):
        pytest.skip("this CPU cannot run x86-avx2: compiled only")
    got = sparsec.load(fast.library).run(feeds)["last_hidden_state"]
    np.testing.assert_array_equal(
        got, sparsec.load(portable.library).run(feeds)["last_hidden_state"])
