"""BatchNormalization (inference), Pad, Resize (nearest), the parametric activations and
PRelu against onnxruntime, with their parameters as exporters write them (constants) and, for
Pad and Resize, read at run time and checked against the compiled shape."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sparsec
from sparsec.errors import InputError, KernelNotFoundError
from tests.cnn_ops_helpers import CNN_TARGETS, check_against_onnxruntime, one_node

SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# One multiply-add per element from per-channel factors formed as onnxruntime forms them, or a
# clamp of alpha x + beta: within an eps or two of onnxruntime's values.
PER_ELEMENT_RTOL, PER_ELEMENT_ATOL = 1e-6, 1e-6


def random_input(shape, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return (3 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=4),
       epsilon=st.sampled_from([1e-5, 1e-3, 0.1]), dtype=st.sampled_from(["float32", "float64"]))
def test_batch_normalization(target, shape, epsilon, dtype, compiler):
    rng = np.random.default_rng(5)
    channels = shape[1]
    stats = [("scale", rng.standard_normal(channels)), ("bias", rng.standard_normal(channels)),
             ("mean", rng.standard_normal(channels)), ("var", rng.random(channels) + 0.1)]
    model = one_node("BatchNormalization", shape, {"epsilon": epsilon},
                     initializers=[(n, a.astype(dtype)) for n, a in stats], dtype=dtype,
                     opset=15)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 6, dtype)},
                              rtol=PER_ELEMENT_RTOL, atol=PER_ELEMENT_ATOL)


def test_batch_normalization_training_mode_is_refused(compiler):
    channels = 3
    stats = [(n, np.ones(channels, np.float32)) for n in ("scale", "bias", "mean", "var")]
    model = one_node("BatchNormalization", [2, channels, 4], {"training_mode": 1},
                     initializers=stats, opset=15, outputs=("y", "running_mean", "running_var"))
    with pytest.raises(KernelNotFoundError, match="training_mode=1"):
        compiler.compile(model, "generic")


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(op=st.sampled_from(["HardSigmoid", "HardSwish"]), alpha=st.floats(0.05, 1.0),
       beta=st.floats(-1.0, 1.0))
def test_hard_activations(target, op, alpha, beta, compiler):
    """float32 only: onnxruntime has no float64 HardSigmoid to compare with."""
    attrs = {"alpha": alpha, "beta": beta} if op == "HardSigmoid" else {}
    shape = [2, 3, 5, 7]
    model = one_node(op, shape, attrs, opset=14)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 7)},
                              rtol=PER_ELEMENT_RTOL, atol=PER_ELEMENT_ATOL)


# libm's expm1 and log1p against onnxruntime's own exponentials: a few float32 ulps apart.
EXPONENTIAL_RTOL, EXPONENTIAL_ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(op=st.sampled_from(["LeakyRelu", "Elu", "Selu", "Softplus"]),
       alpha=st.floats(0.01, 2.0), gamma=st.floats(0.5, 2.0), defaults=st.booleans())
def test_parametric_activations(target, op, alpha, gamma, defaults, compiler):
    """Their attributes given or left to ONNX's defaults, on values of either sign, zeros,
    large magnitudes (Softplus of 100 would overflow e^x as written), infinities and NaN."""
    attrs = {} if defaults or op == "Softplus" else {"alpha": alpha}
    if op == "Selu" and not defaults:
        attrs["gamma"] = gamma
    shape = [2, 3, 5, 7]
    x = random_input(shape, 8)
    x.flat[:6] = [0.0, -0.0, 100.0, -100.0, np.inf, -np.inf]
    x.flat[6] = np.nan
    model = one_node(op, shape, attrs, opset=14)
    check_against_onnxruntime(compiler, target, model, {"x": x},
                              rtol=EXPONENTIAL_RTOL, atol=EXPONENTIAL_ATOL)


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("slope_shape", [[3, 1, 1], [1], [2, 3, 5, 7], [7]])
def test_prelu_broadcasts_its_slope(target, slope_shape, compiler):
    """PRelu's slope per channel (as torch exports nn.PReLU(channels)), one for all, per
    element, and along the last axis; exact, one product per element."""
    shape = [2, 3, 5, 7]
    slope = np.random.default_rng(9).standard_normal(slope_shape).astype(np.float32)
    model = one_node("PRelu", shape, {}, initializers=[("slope", slope)], opset=16)
    x = random_input(shape, 10)
    x.flat[6] = np.nan
    check_against_onnxruntime(compiler, target, model, {"x": x}, rtol=0, atol=0)


@st.composite
def pads_cases(draw) -> tuple[list[int], str, list[int]]:
    """A shape, a mode and ONNX pads (all begins, then all ends). Negative pads crop (constant
    mode); reflect pads stay below the extent, as onnxruntime requires."""
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    mode = draw(st.sampled_from(["constant", "reflect", "edge", "wrap"]))
    pads = []
    for _side in ("begins", "ends"):
        for n in shape:
            if mode == "constant":
                pads.append(draw(st.integers(-(n - 1) // 2, 3)))
            elif mode == "reflect":
                pads.append(draw(st.integers(0, n - 1)))
            else:
                pads.append(draw(st.integers(0, 3)))
    return shape, mode, pads


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(case=pads_cases(), value=st.sampled_from([None, 0.0, -1.5]))
def test_pad(target, case, value, compiler):
    shape, mode, pads = case
    initializers = [("pads", np.array(pads, np.int64))]
    if value is not None and mode == "constant":
        initializers.append(("value", np.array(value, np.float32)))
    model = one_node("Pad", shape, {"mode": mode}, initializers=initializers)
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 8)})


@pytest.mark.parametrize("target", CNN_TARGETS)
def test_pad_some_axes_of_an_integer_tensor(target, compiler):
    """Opset 18's axes input (negative here), on int64 data with a constant value."""
    shape = [2, 3, 4]
    model = one_node("Pad", shape, {"mode": "constant"}, dtype="int64", initializers=[
        ("pads", np.array([1, 0, 2, 3], np.int64)), ("value", np.array(7, np.int64)),
        ("axes", np.array([-1, 0], np.int64))])
    x = np.arange(24, dtype=np.int64).reshape(shape)
    check_against_onnxruntime(compiler, target, model, {"x": x})


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_pad_before_opset_11(mode, compiler):
    """Opset 2's Pad, pads and value as attributes."""
    shape = [2, 3]
    model = one_node("Pad", shape, {"mode": mode, "pads": [1, 0, 2, 3], "value": 2.5},
                     opset=10)
    check_against_onnxruntime(compiler, "generic", model, {"x": random_input(shape, 13)})


def test_pad_at_run_time_is_checked(compiler):
    """Pads as a graph input: the compiled shape holds for pads that give it (here edge pads
    moved from one side to the other), and other pads stop the run with a message."""
    model = one_node("Pad", [2, 3], {"mode": "edge"}, extra_inputs=[("pads", [4], "int64")],
                     output_shape=[3, 6])
    module = sparsec.load(compiler.compile(model, "generic").library)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for pads in ([1, 2, 0, 1], [0, 0, 1, 3]):
        wanted = np.pad(x, [(pads[0], pads[2]), (pads[1], pads[3])], mode="edge")
        np.testing.assert_array_equal(module.run({"x": x, "pads": np.array(pads)})["y"], wanted)
    with pytest.raises(InputError, match="Pad node node: pads 1 and 1 on axis 0 give extent 4"):
        module.run({"x": x, "pads": np.array([1, 0, 1, 3])})


TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
              "half_pixel_symmetric"]
ROUNDINGS = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@pytest.mark.parametrize("target", CNN_TARGETS)
@SETTINGS
@given(size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       scales=st.tuples(*[st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 3.0])] * 2),
       transform=st.sampled_from(TRANSFORMS), rounding=st.sampled_from(ROUNDINGS))
# A tie in onnxruntime's float arithmetic (source 0.5 at output 0 of 7 -> 4.2), which a fused
# multiply-add in the kernel's coordinate made 0.50000006
@example(size=(2, 7), scales=(0.5, 0.6), transform="half_pixel_symmetric",
         rounding="round_prefer_floor")
def test_resize_nearest_by_scales(target, size, scales, transform, rounding, compiler):
    shape = [1, 2, *size]
    if any(int(np.floor(n * s)) == 0 for n, s in zip(size, scales)):
        scales = (2.0, 2.0)
    model = one_node("Resize", shape, {"mode": "nearest", "nearest_mode": rounding,
                                       "coordinate_transformation_mode": transform},
                     initializers=[("scales", np.array([1, 1, *scales], np.float32))],
                     node_inputs=["x", "", "scales"])
    x = random_input(shape, 9)
    if transform != "half_pixel_symmetric":
        check_against_onnxruntime(compiler, target, model, {"x": x})
        return
    # onnxruntime computes this transform's coordinates in float and rounds some that are
    # not ties as ties (7 pixels at scale 0.6f: exactly 0.50000010, its index 0): the
    # reference here is exact, in rationals
    result = compiler.compile(model, target)
    if compiler.can_run(target):
        expected = x
        for axis, (n, scale) in enumerate(zip(size, scales), start=2):
            index = _exact_symmetric_indices(n, np.float32(scale), rounding)
            expected = np.take(expected, index, axis=axis)
        got = sparsec.load(result.library).run({"x": x})["y"]
        np.testing.assert_array_equal(got, expected)


def _exact_symmetric_indices(n: int, scale: np.float32, rounding: str) -> list[int]:
    """Nearest source index per output of half_pixel_symmetric, as ONNX defines it, in
    exact rational arithmetic on the float32 scale: n/2 (1 - m/(s n)) + (o + 1/2)/s - 1/2."""
    s = Fraction(float(scale))
    m = math.floor(n * float(scale))  # the output extent, as onnxruntime and sparsec take it
    indices = []
    for o in range(m):
        source = Fraction(n, 2) * (1 - Fraction(m) / (s * n)) + (o + Fraction(1, 2)) / s \
            - Fraction(1, 2)
        source = min(max(source, Fraction(0)), Fraction(n - 1))
        tie = source - math.floor(source) == Fraction(1, 2)
        if rounding == "floor" or (tie and rounding == "round_prefer_floor"):
            index = math.floor(source)
        elif rounding == "ceil" or (tie and rounding == "round_prefer_ceil"):
            index = math.ceil(source)
        else:
            index = math.floor(source + Fraction(1, 2))
        indices.append(index)
    return indices


@pytest.mark.parametrize("target", CNN_TARGETS)
@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_nearest_by_sizes(target, policy, compiler):
    shape = [1, 3, 5, 7]
    model = one_node("Resize", shape, {"mode": "nearest", "axes": [2, 3],
                                       "keep_aspect_ratio_policy": policy},
                     initializers=[("sizes", np.array([9, 11], np.int64))],
                     node_inputs=["x", "", "", "sizes"])
    check_against_onnxruntime(compiler, target, model, {"x": random_input(shape, 10)})


def test_resize_scales_at_run_time_are_checked(compiler):
    model = one_node("Resize", [1, 1, 2, 3], {"mode": "nearest"},
                     extra_inputs=[("scales", [4], "float32")], node_inputs=["x", "", "scales"],
                     output_shape=[1, 1, 4, 6])
    module = sparsec.load(compiler.compile(model, "generic").library)
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    got = module.run({"x": x, "scales": np.array([1, 1, 2, 2], np.float32)})["y"]
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))
    with pytest.raises(InputError, match="Resize node node: its scales give extent 6 on axis 2"):
        module.run({"x": x, "scales": np.array([1, 1, 3, 2], np.float32)})


@pytest.mark.parametrize("attrs,message", [
    ({"mode": "linear"}, "nearest neighbour only"),
    ({"coordinate_transformation_mode": "tf_half_pixel_for_nearest"},
     "coordinate_transformation_mode 'tf_half_pixel_for_nearest'")])
def test_unsupported_resize_is_refused(attrs, message, compiler):
    model = one_node("Resize", [1, 1, 2, 2], attrs, opset=11,
                     initializers=[("roi", np.zeros(0, np.float32)),
                                   ("scales", np.array([1, 1, 2, 2], np.float32))])
    with pytest.raises(KernelNotFoundError, match=message):
        compiler.compile(model, "generic")
