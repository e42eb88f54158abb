"""ONNX node conformance: onnx's own backend cases for every operator sparsec runs.

The cases are generated in memory by `onnx.backend.test.loader.load_model_tests(kind="node")`, so
they follow the installed (pinned) onnx release. A case is selected when at least one of its nodes
is a run-time operator (`RUNTIME_OPS`, or one a pass lowers to them, `LOWERED_OPS`) and every other
node folds away, which is the rule the frontend itself applies. Each selected case is compiled for
`generic` and for `native` (the test ids say which target that is here), run on the case's inputs
and compared with the case's expected outputs at the case's tolerances (integer and bool outputs
exactly).

Cases that cannot pass are in EXCLUDED with the reason; they must be refused cleanly.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsec.compiler.ir import DTYPES
from sparsec.compiler.ops import LOWERED_OPS, RUNTIME_OPS
from sparsec.errors import SparsecError
from tests.conftest import HOST_TARGETS

STANDARD_DOMAINS = ("", "ai.onnx")

_RUNTIME_AXES = ("ReduceMean's axes are a graph input here; the compiled output shape needs "
                 "them at compile time (exports pass constants, which fold)")
EXCLUDED = {
    **{f"test_reduce_mean_{variant}": _RUNTIME_AXES for variant in (
        "default_axes_keepdims_example", "default_axes_keepdims_random",
        "do_not_keepdims_example", "do_not_keepdims_random", "keepdims_example",
        "keepdims_random", "negative_axes_keepdims_example", "negative_axes_keepdims_random")},
    **{name: "blocked quantization (block_size, opset 21): sparsec takes a scale per tensor "
              "or per axis" for name in ("test_dequantizelinear_blocked",
                                         "test_quantizelinear_blocked_asymmetric",
                                         "test_quantizelinear_blocked_symmetric")},
    **{f"test_split_{variant}_opset{opset}": "Split's sizes are a graph input here; the "
       "compiled output shapes need them at compile time (exports pass constants)"
       for variant in ("variable_parts_1d", "variable_parts_2d", "variable_parts_default_axis",
                       "zero_size_splits") for opset in (13, 18)},
    "test_identity_sequence": "the input and output are sequence(tensor); sparsec compiles "
                              "tensors only",
    "test_identity_opt": "the input and output are optional(sequence(tensor)); sparsec compiles "
                         "tensors only",
    **{f"test_batchnorm_{variant}_training_mode": "training_mode=1: batch statistics and "
       "running-mean outputs; sparsec compiles inference graphs" for variant in (
        "epsilon", "example")},
    **{f"test_maxpool_with_argmax_2d_precomputed_{variant}": "MaxPool's Indices output, which "
       "only MaxUnpool reads; sparsec computes the values only" for variant in (
        "pads", "strides")},
    **{f"test_resize_{variant}": "Resize by linear or cubic interpolation (tf_crop_and_resize "
       "cases interpolate linearly); sparsec resizes by nearest neighbour only"
       for variant in (
        "downsample_scales_cubic", "downsample_scales_cubic_A_n0p5_exclude_outside",
        "downsample_scales_cubic_align_corners", "downsample_scales_cubic_antialias",
        "downsample_scales_linear", "downsample_scales_linear_align_corners",
        "downsample_scales_linear_antialias", "downsample_scales_linear_half_pixel_symmetric",
        "downsample_sizes_cubic", "downsample_sizes_cubic_antialias",
        "downsample_sizes_linear_antialias", "downsample_sizes_linear_pytorch_half_pixel",
        "tf_crop_and_resize", "tf_crop_and_resize_axes_2_3", "tf_crop_and_resize_axes_3_2",
        "tf_crop_and_resize_extrapolation_value", "upsample_scales_cubic",
        "upsample_scales_cubic_A_n0p5_exclude_outside", "upsample_scales_cubic_align_corners",
        "upsample_scales_cubic_asymmetric", "upsample_scales_linear",
        "upsample_scales_linear_align_corners", "upsample_scales_linear_half_pixel_symmetric",
        "upsample_sizes_cubic")},
}



@functools.lru_cache(maxsize=1)
def all_cases() -> dict:
    """Every generated node case by name; generating them takes seconds, so once per process."""
    from onnx.backend.test.loader import load_model_tests

    # Some generators of unrelated cases overflow on purpose (casts to narrow floats, log 0).
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {case.name: case for case in load_model_tests(kind="node")}


def uses_runtime_ops(model: onnx.ModelProto) -> bool:
    """Some node needs a kernel, and every node either has one or has only constant inputs."""
    constant = {t.name for t in model.graph.initializer}
    runtime = False
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            return False
        if all(not name or name in constant for name in node.input):
            constant.update(node.output)
        elif node.op_type in RUNTIME_OPS | LOWERED_OPS:
            runtime = True
        else:
            return False
    return runtime


@functools.lru_cache(maxsize=1)
def selected_names() -> list[str]:
    return sorted(name for name, case in all_cases().items()
                  if case.model is not None and uses_runtime_ops(case.model))


def unrepresentable_dtype(model: onnx.ModelProto) -> str | None:
    """An element type of the case's graph that sparsec's IR does not represent (bfloat16,
    the float8/4 and int4/2 types, strings; float16 is represented at the graph's boundary
    and converted by Cast, so its Cast and IsNaN cases run)."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        elem_type = value.type.tensor_type.elem_type
        if elem_type and elem_type not in DTYPES:
            return onnx.TensorProto.DataType.Name(elem_type)
    for node in graph.node:
        if node.op_type == "Cast" and node.attribute[0].i not in DTYPES:
            return onnx.TensorProto.DataType.Name(node.attribute[0].i)
    return None


@functools.lru_cache(maxsize=1)
def excluded() -> dict[str, str]:
    """EXCLUDED plus the cases excluded by rule, each with its reason."""
    reasons = dict(EXCLUDED)
    for name in selected_names():
        model = all_cases()[name].model
        if dtype := unrepresentable_dtype(model):
            reasons.setdefault(name, f"element type {dtype}: sparsec's IR has no such dtype")
    return reasons


def case_params() -> list:
    """Excluded cases are not run here; test_excluded_case_is_refused checks them instead."""
    return [pytest.param(name, id=name) for name in selected_names() if name not in excluded()]


def as_array(value) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


@pytest.mark.parametrize("target", HOST_TARGETS)
@pytest.mark.parametrize("name", case_params())
def test_node_case(name, target, compiler):
    case = all_cases()[name]
    (inputs, expected), = case.data_sets
    graph = case.model.graph
    feeds = {value.name: as_array(data) for value, data in zip(graph.input, inputs)}
    results = compiler.load(case.model, target).run(feeds)

    assert list(results) == [value.name for value in graph.output]
    for (output, actual), wanted in zip(results.items(), expected):
        wanted = as_array(wanted)
        assert (actual.dtype, actual.shape) == (wanted.dtype, wanted.shape), output
        if np.issubdtype(wanted.dtype, np.floating):
            np.testing.assert_allclose(actual, wanted, rtol=case.rtol, atol=case.atol,
                                       err_msg=output)
        else:
            np.testing.assert_array_equal(actual, wanted, err_msg=output)


@pytest.mark.parametrize("name", sorted(excluded()))
def test_excluded_case_is_refused(name, compiler):
    """Cannot pass means a clear sparsec error at compile time, never a crash or a wrong run."""
    with pytest.raises(SparsecError):
        compiler.compile(all_cases()[name].model, "generic")


def test_excluded_cases_are_selected_cases():
    """An exclusion names a case this file would otherwise run, so the list cannot go stale."""
    assert not set(EXCLUDED) - set(selected_names())


def test_every_runtime_op_has_cases():
    covered = {node.op_type for name in selected_names() if name not in excluded()
               for node in all_cases()[name].model.graph.node}
    assert not (RUNTIME_OPS | LOWERED_OPS) - covered
