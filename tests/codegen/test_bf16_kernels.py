"""Kernel tests for the bf16 Dense rows (`--dtype bf16`), against a float64 reference of the
same products: activations and weights rounded to bf16 (nearest even, ml_dtypes as the
independent reference for the rounding), then multiplied exactly and summed.

Tolerance, per output: (K + 2) * 2**-24 * (sum |x_k w_k| + |bias|). Every bf16 product is
exact in float32 (8-bit significands), so the only error is float32 summation: at most K
roundings of at most 2**-24 relative to the running sum's magnitude, which the sum of
absolute terms bounds (plus the bias add); Relu and Clip do not increase it.

Rows run natively where the host has their ISA (the AVX2 rows on any AVX2 host): the AVX-512
library carries both rows and calls the VDPBF16PS one where the CPU reports avx512bf16, so its
avx512f row runs with that feature hidden. The AMX rows (TDPBF16PS) run through the emulation
header where the CPU has AVX-512 but no AMX. Elsewhere they are compile-only;
the test ids say which.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

import sparsec
from sparsec.codegen import bf16_params as bp
from sparsec.codegen import targets
from sparsec.codegen.kernels import KERNELS, KernelSpec
from tests.graphs import model

ROWS = [k for k in KERNELS if k.weight_dtype == "bfloat16"]
CLIP = (-0.5, 0.75)
AVX512 = targets.TARGETS["x86-avx512"]
HIDE_BF16 = f"-DSPARSEC_HIDE_FEATURES={1 << targets.FEATURE_BITS['avx512bf16']}"


def target_of(row: KernelSpec) -> targets.Target:
    return {"scalar": targets.TARGETS["generic"], "amx": targets.TARGETS["x86-amx"],
            "avx2": targets.TARGETS["x86-avx2"]}.get(row.isa, AVX512)


def mode_of(row: KernelSpec) -> str:
    if targets.runs_emulated(target_of(row)):
        return "emulated"  # AMX tiles in scalar C (runtime_c/sparsec_amx.h)
    features = {"avx512bf16": ("avx512bf16",)}.get(row.isa, ())
    runs = targets.can_execute(target_of(row)) and all(
        f in targets.host_features() for f in features)
    return "native" if runs else "compile-only"


def to_bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def reference(x, w, bias, activation: str):
    xb, wb = to_bf16(x), to_bf16(w)
    y = xb @ wb + (bias if bias is not None else 0)
    bound = (x.shape[1] + 2) * 2.0**-24 * (np.abs(xb) @ np.abs(wb)
                                          + (np.abs(bias) if bias is not None else 0))
    if activation == "Relu":
        y = np.maximum(y, 0)
    elif activation == "Clip":
        y = np.clip(y, *CLIP)
    return y, bound


def one_node_model(m, k, n, weight, bias, activation):
    nodes, inits, last = [helper.make_node("MatMul", ["x", "w"], ["p"])], [("w", weight)], "p"
    if bias is not None:
        nodes.append(helper.make_node("Add", ["p", "b"], ["a"]))
        inits.append(("b", bias))
        last = "a"
    if activation:
        extra = ["lo", "hi"] if activation == "Clip" else []
        inits += list(zip(extra, (np.float32(b) for b in CLIP)))
        nodes.append(helper.make_node(activation, [last, *extra], ["y"]))
        last = "y"
    return model(nodes, [("x", [m, k])], [(last, [m, n])], inits)


SIZES = st.one_of(st.sampled_from([1, 2, 3, 16, 17, 31, 32, 33, 65]), st.integers(1, 80))


@pytest.mark.parametrize("row", [pytest.param(r, id=f"{r.symbol}:{mode_of(r)}") for r in ROWS])
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=SIZES, k=SIZES, n=SIZES, density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       bias=st.booleans(), activation=st.sampled_from(["", "Relu", "Clip"]),
       seed=st.integers(0, 2**32 - 1))
@example(m=5, k=1, n=17, density=1.0, bias=True, activation="", seed=0)  # k_eq_1: half a pair
@example(m=70, k=35, n=20, density=0.5, bias=False, activation="Relu", seed=1)  # k_tail, m_tail
@example(m=64, k=130, n=40, density=0.0, bias=True, activation="Clip", seed=2)  # all_zero_weight
@example(m=100, k=1100, n=20, density=0.3, bias=True, activation="", seed=3)  # deep K: T halved
def test_bf16_row_matches_the_reference(row, m, k, n, density, bias, activation, seed,
                                        compiler):
    rng = np.random.default_rng(seed)
    keep = np.repeat(rng.random((-(-k // 2), n)) < density, 2, 0)[:k]
    # pruned weights as exporters leave them: half of the zeros are -0.0
    weight = (rng.standard_normal((k, n)) * keep).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    x = rng.standard_normal((m, k)).astype(np.float32)
    hide = (HIDE_BF16,) if row.isa == "avx512f" else ()
    result = compiler.compile(one_node_model(m, k, n, weight, b, activation),
                              target_of(row).name, quantize="bf16", force_pattern=row.pattern,
                              extra_cflags=("-Werror", *hide))
    (layer,) = result.info["layers"]
    assert row.symbol in (layer["kernel"], layer.get("dispatch", {}).get(row.isa))
    if mode_of(row) == "compile-only":  # emulated: the AMX header's build loads in process
        return
    (actual,) = sparsec.load(result.library, threads=2).run({"x": x}).values()
    expected, bound = reference(x, weight, b, activation)
    error = np.abs(actual - expected)
    assert np.all(error <= bound), (f"{int((error > bound).sum())} outputs past the bound, "
                                    f"worst {np.max(error - bound):.3g}")


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float32, 64, elements=st.floats(width=32, allow_nan=True)))
def test_bf16_rounding_is_nearest_even(x):
    """codegen's rounding of weights (and the kernels', by the same rule) against ml_dtypes."""
    got = bp.bf16_bits(x)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all(got[nan] & 0x7F)


def test_negative_zero_weights_keep_no_pair(compiler, tmp_path):
    """A pruned weight stored as -0.0 has nonzero bits; its pair must still be skipped."""
    w = np.zeros((8, 3), np.float32)
    w[::2] = -0.0
    w[5, 1] = 2.0
    result = compiler.compile(one_node_model(2, 8, 3, w, None, ""), "generic", quantize="bf16",
                              force_pattern="2x1", keep_source=tmp_path / "src")
    assert "in 2x1 pairs, 1 kept" in (tmp_path / "src" / "model.c").read_text()
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    (y,) = sparsec.load(result.library).run({"x": x}).values()
    np.testing.assert_array_equal(y, [[0, 10, 0], [0, 26, 0]])


@pytest.mark.parametrize("row", [pytest.param(r, id=f"{r.symbol}:{mode_of(r)}") for r in ROWS
                                 if r.pattern == "1x16"])
def test_unpaired_1x16_block_adds_nothing_even_to_inf(row, compiler):
    """The 1x16 rows take a column block's blocks two at a time; an odd last block pairs with
    a zero row of activations, never with a real one, whose inf times its zero weights would
    be NaN."""
    w = np.zeros((8, 32), np.float32)
    w[3, :16] = np.arange(1, 17)  # one block in the first column block: unpaired
    w[[1, 5, 6], 16:] = 1.0  # three in the second: one pair and one unpaired
    x = np.ones((2, 8), np.float32)
    x[:, 3] = np.inf
    hide = (HIDE_BF16,) if row.isa == "avx512f" else ()
    result = compiler.compile(one_node_model(2, 8, 32, w, None, ""), "x86-avx512",
                              quantize="bf16", force_pattern="1x16", extra_cflags=hide)
    (layer,) = result.info["layers"]
    assert row.symbol in (layer["kernel"], layer.get("dispatch", {}).get(row.isa))
    if mode_of(row) == "compile-only":
        return
    (y,) = sparsec.load(result.library).run({"x": x}).values()
    np.testing.assert_array_equal(y[:, :16], np.inf)
    np.testing.assert_array_equal(y[:, 16:], 3.0)
