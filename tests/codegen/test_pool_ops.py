"""MaxPool, AveragePool, GlobalMaxPool and GlobalAveragePool against onnxruntime: windows of
every size, stride, dilation and padding (explicit, SAME_UPPER, SAME_LOWER, VALID), ceil_mode
and count_include_pad, on odd plane sizes, for the portable build and each vector width."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sparsec.codegen.pool_params import SEPARABLE_ROW_BYTES
from sparsec.errors import KernelNotFoundError
from tests.cnn_ops_helpers import CNN_TARGETS, check_against_onnxruntime, one_node

# A mean of at most 16 standard-normal terms summed in another order than onnxruntime's (MLAS
# vectorises its pools): each partial sum within 16 eps of the absolute sum, under 64 here,
# so about 1e-5 absolute at worst; maxima are exact.
AVERAGE_ATOL = 1e-5

SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def windows(draw, dilated: bool) -> tuple[list[int], dict]:
    """An input shape (N, C, [H,] W) and pooling attributes whose output is not empty; pads
    below the kernel, as onnxruntime requires."""
    spatial = draw(st.integers(1, 2))
    sizes = [draw(st.integers(1, 13)) for _ in range(spatial)]
    kernel = [draw(st.integers(1, min(4, size + 2))) for size in sizes]
    strides = [draw(st.integers(1, 3)) for _ in range(spatial)]
    dilations = [draw(st.integers(1, 2)) if dilated else 1 for _ in range(spatial)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = {"kernel_shape": kernel, "strides": strides}
    if dilated:
        attrs["dilations"] = dilations
    if auto_pad == "NOTSET":
        pads = [draw(st.integers(0, k - 1)) for k in kernel + kernel]
        attrs.update(pads=pads, ceil_mode=draw(st.integers(0, 1)))
    else:
        attrs["auto_pad"] = auto_pad
        pads = [0] * 2 * spatial
    for d in range(spatial):
        span = (kernel[d] - 1) * dilations[d] + 1
        if auto_pad in ("NOTSET", "VALID"):
            padded = sizes[d] + pads[d] + pads[spatial + d]
            assume(padded >= span)
            # ceil_mode's extra window must start inside the input or the leading padding:
            # past it, ONNX's shape inference and onnxruntime disagree (sparsec refuses, below)
            out = -(-(padded - span) // strides[d]) + 1
            assume(not attrs.get("ceil_mode") or (out - 1) * strides[d] < sizes[d] + pads[d])
        else:  # onnxruntime and ONNX's reference disagree on SAME padding when dilated, and
            # onnxruntime refuses a kernel shorter than its stride (negative padding)
            assume(dilations[d] == 1 and kernel[d] >= strides[d])
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 3))] + sizes
    return shape, attrs


def random_input(shape, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(case=windows(dilated=True))
# a window whose taps all land in the padding: onnxruntime gives -FLT_MAX there, not -inf
@example(case=([1, 1, 1], {"kernel_shape": [2], "strides": [1], "dilations": [2],
                           "pads": [1, 1], "ceil_mode": 0}))
def test_max_pool(target, case, compiler):
    shape, attrs = case
    model = one_node("MaxPool", shape, attrs, opset=12)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape)})


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(case=windows(dilated=False), include_pad=st.integers(0, 1))
def test_average_pool(target, case, include_pad, compiler):
    shape, attrs = case
    model = one_node("AveragePool", shape, {**attrs, "count_include_pad": include_pad},
                     opset=11)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape)},
                              atol=AVERAGE_ATOL)


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_resnet_stem_pool(target, op, compiler):
    """The 3x3 stride-2 pool after a ResNet stem, pad 1, on an odd-sized plane whose last
    window runs into the padding."""
    shape = [1, 8, 29, 31]
    model = one_node(op, shape, {"kernel_shape": [3, 3], "strides": [2, 2],
                                 "pads": [1, 1, 1, 1]}, opset=12)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 1)},
                              atol=AVERAGE_ATOL)


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("width", [SEPARABLE_ROW_BYTES // 4, SEPARABLE_ROW_BYTES // 4 + 1])
def test_max_pool_over_rows_too_wide_for_the_stack(target, width, compiler):
    """MaxPool keeps a row of column maxima on the stack up to SEPARABLE_ROW_BYTES; a wider
    row takes every tap from the input: float32 rows on both sides of the limit, with NaN
    taps."""
    shape = [1, 2, 3, width]
    x = random_input(shape, 4)
    x[0, 1, 1, ::7] = np.nan
    model = one_node("MaxPool", shape, {"kernel_shape": [2, 3], "strides": [1, 2],
                                        "pads": [1, 1, 0, 1]}, opset=12)
    check_against_onnxruntime(compiler, target, model, {"x": x})


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("dtype", ["uint8", "int8", "float64"])
def test_max_pool_other_dtypes(target, dtype, compiler):
    shape = [1, 2, 9, 10]
    x = np.random.default_rng(2).integers(0 if dtype == "uint8" else -128, 127, shape)
    model = one_node("MaxPool", shape, {"kernel_shape": [2, 3], "strides": [2, 2],
                                        "pads": [1, 0, 1, 2]}, dtype=dtype, opset=12)
    check_against_onnxruntime(compiler, target, model, {"x": x.astype(dtype)})


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_three_dimensional_pool(target, op, compiler):
    shape = [1, 2, 5, 6, 7]
    attrs = {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [1, 1, 0, 0, 1, 1]}
    model = one_node(op, shape, attrs, opset=12)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 3)},
                              atol=AVERAGE_ATOL)


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(shape=st.lists(st.integers(1, 9), min_size=3, max_size=5),
       op=st.sampled_from(["GlobalMaxPool", "GlobalAveragePool"]))
def test_global_pool(target, shape, op, compiler):
    model = one_node(op, shape, {}, opset=12)
    # a plane of up to 729 standard-normal terms: the mean's error is within 729 eps of the
    # mean absolute value (about 0.8), 7e-5
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 4)},
                              atol=7e-5 if op == "GlobalAveragePool" else 0.0)


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("op, attrs", [("MaxPool", {"kernel_shape": [2, 2]}),
                                       ("GlobalMaxPool", {})])
def test_a_max_over_minus_infinity_is_the_lowest_finite_value(target, op, attrs, compiler):
    """onnxruntime's maxima start from -FLT_MAX, so a window of -inf (and NaNs, which no
    comparison picks) gives -FLT_MAX."""
    x = np.full((1, 2, 2, 2), -np.inf, np.float32)
    x[0, 1, 0, 0] = np.nan
    check_against_onnxruntime(compiler, target, one_node(op, list(x.shape), attrs, opset=12),
                              {"x": x})


def test_last_window_in_the_end_padding_is_refused(compiler):
    """11 rows, 3x3 windows, stride 2, pads 1 and 2, ceil_mode: ONNX's shape inference gives 7
    rows, the seventh window starting in the end padding; onnxruntime gives 6."""
    model = one_node("MaxPool", [1, 1, 11, 4], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                "pads": [1, 0, 2, 0], "ceil_mode": 1}, opset=12)
    with pytest.raises(KernelNotFoundError, match="start in the end padding"):
        compiler.compile(model, "generic")


def test_max_pool_indices_are_refused(compiler):
    model = one_node("MaxPool", [1, 1, 4, 4], {"kernel_shape": [2, 2]}, opset=12,
                     outputs=("y", "indices"), output_dtypes={"indices": "int64"})
    with pytest.raises(KernelNotFoundError, match="Indices output"):
        compiler.compile(model, "generic")


def test_storage_order_is_refused(compiler):
    model = one_node("MaxPool", [1, 1, 4, 4], {"kernel_shape": [2, 2], "storage_order": 1},
                     opset=12)
    with pytest.raises(KernelNotFoundError, match="storage_order=1"):
        compiler.compile(model, "generic")
