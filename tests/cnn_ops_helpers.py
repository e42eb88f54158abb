"""Helpers for the CNN operator tests: one-node models whose output shape ONNX's shape
inference works out, and the comparison with onnxruntime on the targets whose vector widths
differ (portable, AVX2, AVX-512, NEON: the pooling loops are vectorised by GCC for each)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import sparsec
from tests.conftest import TARGET_PARAMS, run_onnxruntime

CNN_TARGETS = [p for p in TARGET_PARAMS
               if p.values[0] in ("generic", "x86-avx2", "x86-avx512", "arm-neon")]

ELEMENT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
                 "uint8": TensorProto.UINT8, "int8": TensorProto.INT8,
                 "int64": TensorProto.INT64}


def one_node(op: str, x_shape, attrs: dict, extra_inputs=(), initializers=(),
             dtype: str = "float32", opset: int = 19, outputs=("y",),
             node_inputs=None, output_shape=None, output_dtypes=None) -> onnx.ModelProto:
    """`op` on input "x", `extra_inputs` ([(name, shape, dtype)] graph inputs) and
    `initializers` ([(name, array)]), in that order unless `node_inputs` names them (with ""
    for an omitted optional input); outputs of `output_shape`, or left to shape inference,
    and of the input's dtype unless `output_dtypes` says otherwise."""
    inputs = [helper.make_tensor_value_info("x", ELEMENT_TYPES[dtype], list(x_shape))]
    inputs += [helper.make_tensor_value_info(name, ELEMENT_TYPES[kind], list(shape))
               for name, shape, kind in extra_inputs]
    names = ["x"] + [name for name, _, _ in extra_inputs] + [n for n, _ in initializers]
    node = helper.make_node(op, names if node_inputs is None else node_inputs, list(outputs),
                            name="node", **attrs)
    graph = helper.make_graph(
        [node], "cnn", inputs,
        [helper.make_tensor_value_info(name, ELEMENT_TYPES[(output_dtypes or {}).get(
            name, dtype)], output_shape) for name in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    # the checker wants the outputs' shapes: ONNX's own inference writes them in
    return model if output_shape else onnx.shape_inference.infer_shapes(model, strict_mode=True)


def check_against_onnxruntime(compiler, target: str, model: onnx.ModelProto, feeds: dict,
                              rtol: float = 0.0, atol: float = 0.0) -> None:
    """Compile for `target` (only that where it cannot run here) and compare every output."""
    result = compiler.compile(model, target)
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)
    for (name, got), wanted in zip(actual.items(), run_onnxruntime(model, feeds), strict=True):
        assert got.shape == wanted.shape, name
        np.testing.assert_allclose(got, wanted, rtol=rtol, atol=atol, err_msg=name)


def fixed_cases() -> list[tuple[str, onnx.ModelProto, dict, float]]:
    """One model per kernel at odd sizes, with the tails and edges its loops have (a window
    past the padding, a crop, a wrap, an upsample): (label, model, feeds, atol against
    onnxruntime; the pool tests' bound for means)."""
    rng = np.random.default_rng(11)

    def x(*shape, dtype="float32"):
        return {"x": rng.standard_normal(shape).astype(dtype)}

    window = {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 2, 1], "ceil_mode": 1}

    def conv(c, m, kernel, group=1, density=1.0):
        weight = rng.standard_normal((m, c // group, *kernel)).astype(np.float32)
        weight *= rng.random(weight.shape) < density
        return [("w", weight), ("b", rng.standard_normal(m).astype(np.float32))]

    stats = [(name, (rng.random(5) + 0.5).astype(np.float32))
             for name in ("scale", "bias", "mean", "var")]
    return [
        ("maxpool", one_node("MaxPool", [2, 3, 12, 13], {**window, "dilations": [1, 2]},
                             opset=12), x(2, 3, 12, 13), 0.0),
        ("averagepool", one_node("AveragePool", [2, 3, 12, 13],
                                 {**window, "count_include_pad": 1}, opset=12),
         x(2, 3, 12, 13), 1e-5),
        ("averagepool-same", one_node("AveragePool", [1, 4, 7, 9], {
            "kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}, opset=12), x(1, 4, 7, 9), 1e-5),
        ("globalmaxpool", one_node("GlobalMaxPool", [2, 3, 5, 7], {}, opset=12),
         x(2, 3, 5, 7), 0.0),
        ("globalaveragepool", one_node("GlobalAveragePool", [2, 3, 17, 3], {}, opset=12),
         x(2, 3, 17, 3), 1e-5),
        ("batchnorm", one_node("BatchNormalization", [2, 5, 3, 7], {"epsilon": 1e-3},
                               initializers=stats, opset=15), x(2, 5, 3, 7), 1e-6),
        ("hardswish", one_node("HardSwish", [3, 37], {}, opset=14), x(3, 37), 1e-6),
        # Conv (lower_conv): depthwise output rows of 10 (AVX2: a vector and a tail that
        # spills into the row below), two images, strides, asymmetric pads; Im2Col's dilated
        # taps reading past both edges; a sparse 1x1 conv at batch 2. Sums of at most 12 * 9
        # products of normal values: 1e-4 is far above their float32 rounding and far below
        # any wrong tap.
        ("depthwise", one_node("Conv", [2, 19, 9, 11], {
            "kernel_shape": [3, 3], "strides": [2, 1], "pads": [1, 0, 2, 1], "group": 19},
            initializers=conv(19, 19, (3, 3), group=19)), x(2, 19, 9, 11), 1e-4),
        # A depthwise plane in two bands (they share the rows between them), stride 2 along
        # the rows (each padded row split into its two phases).
        ("depthwise-bands", one_node("Conv", [1, 3, 30, 75], {
            "kernel_shape": [3, 3], "strides": [1, 2], "pads": [1, 1, 1, 1], "group": 3},
            initializers=conv(3, 3, (3, 3), group=3)), x(1, 3, 30, 75), 1e-4),
        ("conv-dilated", one_node("Conv", [1, 12, 7, 10], {
            "kernel_shape": [3, 2], "dilations": [2, 3], "pads": [2, 3, 1, 2], "group": 3},
            initializers=conv(12, 9, (3, 2), group=3)), x(1, 12, 7, 10), 1e-4),
        # Stride-2 convs read in phases (absorb_patches): a stem's 7x7 on 3 channels with
        # taps before and past each phase plane, and a sparse 3x3 whose last tile is partial.
        ("conv-phases-stem", one_node("Conv", [1, 3, 20, 18], {
            "kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]},
            initializers=conv(3, 16, (7, 7))), x(1, 3, 20, 18), 1e-4),
        ("conv-phases-sparse", one_node("Conv", [1, 8, 14, 10], {
            "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            initializers=conv(8, 12, (3, 3), density=0.2)), x(1, 8, 14, 10), 1e-4),
        ("conv-pointwise", one_node("Conv", [2, 33, 5, 3], {"kernel_shape": [1, 1]},
                                    initializers=conv(33, 17, (1, 1), density=0.2)),
         x(2, 33, 5, 3), 1e-4),
        ("pad-reflect", one_node("Pad", [2, 5, 4], {"mode": "reflect"}, initializers=[
            ("pads", np.array([0, 4, 3, 1, 2, 3], np.int64))]), x(2, 5, 4), 0.0),
        ("pad-crop", one_node("Pad", [3, 6], {"mode": "constant"}, initializers=[
            ("pads", np.array([-1, 2, 1, -3], np.int64))]), x(3, 6), 0.0),
        ("pad-wrap", one_node("Pad", [1, 2, 3, 4], {"mode": "wrap"}, initializers=[
            ("pads", np.array([0, 0, 2, 1, 0, 1, 3, 5], np.int64))]), x(1, 2, 3, 4), 0.0),
        ("resize-upsample", one_node("Resize", [1, 2, 5, 3], {"mode": "nearest"},
                                     initializers=[("scales", np.array([1, 1, 2, 3],
                                                                       np.float32))],
                                     node_inputs=["x", "", "scales"]), x(1, 2, 5, 3), 0.0),
        ("resize-downsample", one_node("Resize", [1, 1, 9, 7], {
            "mode": "nearest", "coordinate_transformation_mode": "align_corners"},
            initializers=[("sizes", np.array([1, 1, 4, 3], np.int64))],
            node_inputs=["x", "", "", "sizes"]), x(1, 1, 9, 7), 0.0),
    ]
