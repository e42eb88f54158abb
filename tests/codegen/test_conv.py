"""Conv against onnxruntime on every target: drawn kernel sizes, strides, dilations, pads
(explicit, asymmetric and auto_pad), groups (dense, grouped, depthwise), channel counts with
tails, weight densities and the BatchNormalization and activation lower_conv folds in.

Each target runs natively, under qemu (ARM, batched), or compile-only; the test ids say which.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.codegen import targets
from sparsec.compiler.ir import FEATURE_MAJOR
from sparsec.errors import UnsupportedOperatorError
from tests.conftest import (
    HOST_TARGETS,
    ONNXRUNTIME_INT8_ON_VNNI,
    TARGET_PARAMS,
    run_onnxruntime,
)
from tests.runs import Runs

EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class ConvCase:
    n: int
    c: int
    h: int
    w: int  # h == 0: a 1-D conv over [n, c, w]
    m: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int] | str  # (top, left, bottom, right) or an auto_pad mode
    group: int
    density: float
    bias: bool
    batch_norm: bool
    activation: str  # "", "Relu", "Clip" (0, 6: ReLU6), "Sigmoid"
    seed: int = 0


@st.composite
def conv_cases(draw) -> ConvCase:
    one_d = draw(st.booleans()) and draw(st.booleans())  # a quarter of the cases
    kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    group = draw(st.integers(2, 4)) if kind == "grouped" else 1
    c = group * draw(st.integers(1, 9))
    m = c if kind == "depthwise" else group * draw(st.integers(1, 9))
    if kind == "depthwise":
        group = c if c > 1 else 1
    kh = 1 if one_d else draw(st.integers(1, 4))
    kw = draw(st.integers(1, 4))
    sh = 1 if one_d else draw(st.integers(1, 3))
    sw = draw(st.integers(1, 3))
    auto = draw(st.sampled_from(["explicit", "explicit", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    # onnxruntime refuses dilations with SAME padding; ONNX defines them (lower_conv too).
    dh = 1 if one_d or auto.startswith("SAME") else draw(st.integers(1, 2))
    dw = 1 if auto.startswith("SAME") else draw(st.integers(1, 2))
    if auto == "explicit":
        pads = tuple(draw(st.integers(0, k - 1)) if k > 1 else 0
                     for k in (kh, kw, kh, kw))
        if one_d:
            pads = (0, pads[1], 0, pads[3])
    else:
        pads = auto
    h = 0 if one_d else draw(st.integers((kh - 1) * dh + 1, (kh - 1) * dh + 12))
    w = draw(st.integers((kw - 1) * dw + 1, (kw - 1) * dw + 12))
    return ConvCase(n=draw(st.sampled_from([1, 1, 1, 2])), c=c, h=h, w=w, m=m,
                    kernel=(kh, kw), strides=(sh, sw), dilations=(dh, dw), pads=pads,
                    group=group, density=draw(st.sampled_from([1.0, 0.5, 0.1, 0.0])),
                    bias=draw(st.booleans()), batch_norm=draw(st.booleans()),
                    activation=draw(st.sampled_from(["", "Relu", "Clip", "Sigmoid"])),
                    seed=draw(st.integers(0, 2 ** 16)))


def build(case: ConvCase, *, magnitudes: bool = False) -> tuple[onnx.ModelProto, dict]:
    """The case as an ONNX model and its input. magnitudes: |x| and |weights| with
    BatchNormalization folded by hand in float64 and no activation, whose output bounds the
    magnitude of every term each output sums (for the error bound)."""
    rng = np.random.default_rng(case.seed)
    one_d = case.h == 0
    spatial = (case.w,) if one_d else (case.h, case.w)
    kernel = case.kernel[1:] if one_d else case.kernel
    weight = rng.standard_normal((case.m, case.c // case.group, *kernel)).astype(np.float32)
    weight *= rng.random(weight.shape) < case.density
    bias = rng.standard_normal(case.m).astype(np.float32)
    x = rng.standard_normal((case.n, case.c, *spatial)).astype(np.float32)
    bn = [rng.random(case.m) + 0.5, rng.standard_normal(case.m), rng.standard_normal(case.m),
          rng.random(case.m) + 0.5]
    attrs = {"kernel_shape": list(kernel), "group": case.group,
             "strides": list(case.strides[1:] if one_d else case.strides),
             "dilations": list(case.dilations[1:] if one_d else case.dilations)}
    if isinstance(case.pads, str):
        attrs["auto_pad"] = case.pads
    else:
        top, left, bottom, right = case.pads
        attrs["pads"] = [left, right] if one_d else [top, left, bottom, right]
    if magnitudes:
        factor = (bn[0] / np.sqrt(bn[3] + 1e-5)) if case.batch_norm else np.ones(case.m)
        shift = (np.abs(bias) if case.bias else 0) * np.abs(factor) + (
            np.abs(bn[2] * factor) + np.abs(bn[1]) if case.batch_norm else 0)
        weight = np.abs(weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(
            np.float32)
        bias, x = np.asarray(shift, np.float32) * np.ones(case.m, np.float32), np.abs(x)
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = ["x", "W"]
    if case.bias or magnitudes:
        inits.append(numpy_helper.from_array(bias, "B"))
        inputs.append("B")
    nodes = [helper.make_node("Conv", inputs, ["conv"], name="conv", **attrs)]
    last = "conv"
    if case.batch_norm and not magnitudes:
        for name, value in zip(("scale", "shift", "mean", "var"), bn):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization",
                                      ["conv", "scale", "shift", "mean", "var"], ["bn"]))
        last = "bn"
    if case.activation and not magnitudes:
        extra = []
        if case.activation == "Clip":
            inits += [numpy_helper.from_array(np.float32(0), "low"),
                      numpy_helper.from_array(np.float32(6), "high")]
            extra = ["low", "high"]
        nodes.append(helper.make_node(case.activation, [last, *extra], ["act"]))
        last = "act"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model, {"x": x}


def check_against_onnxruntime(case: ConvCase, outputs: dict) -> None:
    """Both sums of K = C/g*kh*kw products (plus bias and the folded BatchNormalization) lie
    within (K + 3) eps of the sum of the terms' magnitudes of the exact value: K - 1 roundings
    of recursive or FMA summation, the bias, and the folded weight's and shift's roundings.
    So they lie within twice that of each other; the activations are 1-Lipschitz, and Sigmoid
    rounds on its own too: sparsec's within 4 ulp of exact (tests/runtime_c/test_vmath.py), an
    ulp at most eps on outputs in [0, 1], and onnxruntime's within 2, so 6 eps between them."""
    model, feeds = build(case)
    (expected,) = run_onnxruntime(model, feeds)
    magnitude_model, magnitude_feeds = build(case, magnitudes=True)
    (magnitude,) = run_onnxruntime(magnitude_model, magnitude_feeds)
    k = case.c // case.group * case.kernel[0] * case.kernel[1]
    allowed = 2 * (k + 3) * EPS * magnitude.astype(np.float64) + 1e-30
    if case.activation == "Sigmoid":
        allowed += 6 * EPS
    actual = outputs["y"]
    assert actual.shape == expected.shape
    excess = np.abs(actual.astype(np.float64) - expected) - allowed
    if not np.all(excess <= 0):
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(f"y{list(map(int, worst))}: sparsec {float(actual[worst])!r}, "
                             f"onnxruntime {float(expected[worst])!r}, allowed "
                             f"{allowed[worst]:.3g} ({int(np.sum(excess > 0))} of "
                             f"{excess.size} differ)")


def edge(**fields) -> ConvCase:
    defaults = dict(n=1, c=8, h=9, w=10, m=16, kernel=(3, 3), strides=(1, 1),
                    dilations=(1, 1), pads=(1, 1, 1, 1), group=1, density=1.0, bias=True,
                    batch_norm=False, activation="")
    return ConvCase(**{**defaults, **fields})


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_random_convs_match_onnxruntime(target, compiler):
    runs = Runs(targets.resolve(target), compiler.cache_dir)

    @settings(max_examples=12, deadline=None)
    @given(case=conv_cases())
    @example(case=edge(kernel=(1, 1), pads=(0, 0, 0, 0), c=32, m=48, h=7, w=9, density=0.1,
                       batch_norm=True, activation="Relu"))  # pointwise, sparse: flips only
    @example(case=edge(c=12, m=12, group=12, strides=(2, 2), activation="Clip",
                       batch_norm=True))  # MobileNet's depthwise 3x3 s2 + BN + ReLU6
    # Depthwise, vectors along the rows: rows narrower than a vector (a tail that spills into
    # the rows below, up to the plane's end), whole and partial vectors with horizontal
    # stride 2 and dilation, planes in several bands (stride 1 and 2: bands share rows), and
    # stride 3 with dilation 2 and an odd left pad (taps in every phase of a row).
    @example(case=edge(c=32, m=32, group=32, h=7, w=7, activation="Clip", batch_norm=True))
    @example(case=edge(c=48, m=48, group=48, h=5, w=37, strides=(1, 2), dilations=(2, 1),
                       pads=(2, 1, 2, 1), density=0.5, activation="Relu"))
    @example(case=edge(c=3, m=3, group=3, h=40, w=100, activation="Relu"))
    @example(case=edge(c=5, m=5, group=5, h=45, w=90, strides=(2, 2), activation="Clip"))
    @example(case=edge(c=4, m=4, group=4, h=9, w=23, kernel=(3, 5), strides=(3, 3),
                       dilations=(2, 2), pads=(2, 3, 1, 0)))
    @example(case=edge(c=6, m=9, group=3, kernel=(2, 3), pads=(0, 2, 1, 0),
                       dilations=(2, 1), density=0.5))
    @example(case=edge(h=0, w=17, kernel=(1, 5), pads=(0, 2, 0, 1), strides=(1, 2),
                       activation="Sigmoid"))  # 1-D
    @example(case=edge(n=2, c=3, m=5, kernel=(7, 7), strides=(2, 2), pads=(3, 3, 3, 3),
                       h=15, w=16, batch_norm=True, activation="Relu"))  # a ResNet stem
    @example(case=edge(pads="SAME_LOWER", strides=(2, 3), kernel=(4, 3), h=11, w=13,
                       bias=False))
    @example(case=edge(kernel=(3, 3), density=0.0, batch_norm=True))  # all-zero weight
    @example(case=edge(c=1, m=1, h=5, w=9, kernel=(2, 1), pads="SAME_LOWER",
                       bias=False))  # wrong patches once GCC vectorised Im2Col (x86)
    def check(case: ConvCase):
        model, feeds = build(case)
        result = compiler.compile(model, target)
        assert not any(layer["op"] == "Conv" for layer in result.info["layers"])
        runs.submit(result, feeds, functools.partial(check_against_onnxruntime, case),
                    label=repr(case))

    check()
    runs.flush()


# Stride-1 convs that keep their width, so a token-tile kernel reads their patches from X with
# masked shifted rows (absorb_patches): partial tiles, Ho != H, asymmetric pads, dilation,
# every block pattern the token kernels take, channel counts that make a K chunk one tap or
# less, a tap entirely in the padding.
SHIFTED_ROW_CASES = [
    edge(c=8, m=16, h=9, w=10, density=0.1, activation="Relu"),
    edge(c=16, m=8, h=12, w=11, kernel=(3, 3), dilations=(2, 2), pads=(2, 2, 2, 2),
         density=0.3, batch_norm=True),
    edge(c=4, m=12, h=7, w=13, kernel=(2, 3), pads=(0, 1, 1, 1), density=0.2, bias=False),
    edge(c=12, m=20, h=10, w=9, kernel=(3, 3), pads=(0, 1, 0, 1), density=0.2,
         activation="Sigmoid"),  # Ho = H - 2
    edge(c=3, m=5, h=6, w=70, kernel=(1, 5), pads=(0, 2, 0, 2), density=0.4),  # tile > row
    edge(c=8, m=8, h=4, w=5, kernel=(5, 3), pads=(4, 1, 0, 1), density=0.5),  # taps in pads
    edge(c=64, m=24, h=11, w=12, kernel=(3, 3), density=0.05, activation="Clip"),
    edge(c=8, m=136, h=9, w=10, density=0.3, activation="Relu"),  # two column tasks
]

# Strided convs whose taps read every phase of the stride, with H and W multiples of it and
# Wo == W / sw: the Dense reads X split into phases by an Im2Col whose kernel is the stride.
# A ResNet stride-2 3x3, a stem's 7x7 on 3 channels (K chunks of one tap's 3 rows), strides
# of 3 and of (2, 1), a 4x4 kernel whose last output row reads past the phase planes (Ho <
# H / sh), asymmetric pads with taps left of the plane, and partial tiles.
PHASE_CASES = [
    edge(c=8, m=16, h=12, w=10, strides=(2, 2), density=0.2, activation="Relu"),
    edge(c=3, m=8, h=16, w=16, kernel=(7, 7), strides=(2, 2), pads=(3, 3, 3, 3),
         density=0.3, batch_norm=True),
    edge(c=4, m=12, h=9, w=12, strides=(3, 3), density=0.3, bias=False),
    edge(c=12, m=20, h=8, w=11, kernel=(3, 3), strides=(2, 1), density=0.2,
         activation="Clip"),
    edge(c=8, m=8, h=10, w=10, kernel=(4, 4), strides=(2, 2), pads=(0, 1, 0, 1),
         density=0.4),
    edge(c=16, m=12, h=14, w=6, kernel=(3, 5), strides=(2, 2), pads=(2, 3, 0, 1),
         density=0.1, activation="Sigmoid"),
]


def reads_phases(case: ConvCase) -> bool:
    """Whether absorb_patches has the case's Dense read X's stride phases."""
    (kh, kw), (sh, sw), (dh, dw) = case.kernel, case.strides, case.dilations
    top, left, _bottom, right = case.pads
    if (sh, sw) == (1, 1) or case.h % sh or case.w % sw:
        return False
    out_w = (case.w + left + right - (kw - 1) * dw - 1) // sw + 1
    return (out_w == case.w // sw and len({(i * dh - top) % sh for i in range(kh)}) == sh
            and len({(j * dw - left) % sw for j in range(kw)}) == sw)


def assert_reads_phases(graph, case: ConvCase) -> None:
    """The Dense reads an Im2Col's output, and that Im2Col only splits X by the stride."""
    (dense,) = [node for node in graph.nodes if node.op == "Dense"]
    (split,) = [node for node in graph.nodes if node.op == "Im2Col"]
    assert "patches" in dense.attrs and dense.inputs[0] == split.outputs[0], case
    assert split.attrs["kernel"] == list(case.strides) == split.attrs["strides"], split.attrs
    assert split.attrs["pads"] == [0, 0, 0, 0], split.attrs


@pytest.mark.parametrize("copied", [False, True], ids=["in-place", "copied"])
@pytest.mark.parametrize("pattern", ["1x1", "4x1"])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS
                                    if p.values[0] in ("x86-avx2", "x86-avx512")])
def test_stride_1_convs_read_their_patches_in_place(target, pattern, copied, compiler,
                                                    monkeypatch):
    """No Im2Col is left: the Dense reads X itself, and matches onnxruntime (where the host
    runs the target; elsewhere it compiles). Masked lanes are never read, so a tap reaching
    before X's first byte or past its last is no fault. Each case runs both ways a kernel
    reads the patches: in place, and K chunk by K chunk copied to the column task's scratch
    first (spmm_params.copies_patches, forced here either way: the small cases have too few
    reads a row to choose the copy). Copied, on 3 threads: a layer of fewer tiles than
    threads runs a tile's column tasks (136 channels: two) in parallel, each copying into its
    own scratch."""
    from sparsec.codegen import spmm_params

    monkeypatch.setattr(spmm_params, "COPY_PATCHES_MIN_READS", 0.0 if copied else math.inf)
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=3 if copied else 1)
    for case in SHIFTED_ROW_CASES + PHASE_CASES:
        if pattern == "4x1" and case.c % 4:
            continue
        model, feeds = build(case)
        result = compiler.compile(model, target, force_pattern=pattern)
        if case in PHASE_CASES:
            assert reads_phases(case), case
            assert_reads_phases(result.graph, case)
        else:
            ops = [node.op for node in result.graph.nodes]
            assert "Im2Col" not in ops, (case, ops)
            dense = [node for node in result.graph.nodes if node.op == "Dense"]
            assert len(dense) == 1 and "patches" in dense[0].attrs, case
        runs.submit(result, feeds, functools.partial(check_against_onnxruntime, case),
                    label=repr(case))
    runs.flush()


# Dense convs run channels-first (f32-gemm/x86-tokens.c.j2: AVX2 tiles of 16 tokens and blocks
# of 6 output channels, AVX-512 32 and 12, NEON 8 and 12 without patches) where a layer has a
# tile of pixels; fewer keep the panel form. The channels-first tails: tokens M % 16 of 3, 4,
# 14 and 15 (a partial second vector; 7 lanes past a whole one), of 1 and 2 (channels on the
# lanes), channels N % 6 of 1 to 5 (AVX-512: M % 32 of 1, 2, 3, 16, 19 and 31, N % 12 of 0,
# 1, 2, 4, 5 and 8 to 11); patches read in place (stride 1, dilation, tiles across rows, taps
# in the padding), from X's stride phases (the stem's 7x7, a 3x3 stride 2) and from Im2Col
# (stride 2 on an odd plane); every epilogue. M = 15 and a single pixel check the panel
# form's choice.
DENSE_CHANNELS_FIRST_CASES = [
    edge(c=5, m=13, h=5, w=7, activation="Relu"),  # M 35, N % 6 = 1
    edge(c=8, m=12, h=9, w=7, kernel=(3, 3), dilations=(2, 2), pads=(2, 2, 2, 2),
         batch_norm=True, activation="Clip"),  # M 63: 15 tokens in the last tile
    edge(c=16, m=17, h=3, w=5, kernel=(1, 1), pads=(0, 0, 0, 0),
         activation="Sigmoid"),  # M 15: under a tile (AVX2, AVX-512), NEON's tail
    edge(c=6, m=10, h=9, w=11, strides=(2, 2), bias=False),  # Im2Col, M 30
    edge(c=3, m=8, h=16, w=16, kernel=(7, 7), strides=(2, 2), pads=(3, 3, 3, 3),
         batch_norm=True, activation="Relu"),  # a stem, read in phases: M 64, no tail
    edge(c=5, m=7, h=10, w=14, strides=(2, 2), activation="Clip"),  # phases, M 35
    edge(c=4, m=9, h=1, w=1, kernel=(1, 1), pads=(0, 0, 0, 0)),  # one pixel: panel form
    edge(c=7, m=16, h=2, w=40, kernel=(3, 5), pads=(1, 2, 1, 2)),  # tiles across rows
    edge(c=8, m=8, h=4, w=5, kernel=(5, 3), pads=(4, 1, 0, 1)),  # taps in the padding
    edge(c=2, m=11, h=17, w=3, activation="Relu"),  # M 51, N % 6 = 5
    # Last tiles of 1 and 2 tokens, which put the channels on the lanes: AVX2 (16-token
    # tiles) in all four, AVX-512 (48) in the last two and the 6 tokens below.
    edge(c=9, m=14, h=5, w=13, activation="Clip"),  # M 65, N % 6 = 2, K % 4 = 1
    edge(c=6, m=12, h=6, w=11, kernel=(1, 1), pads=(0, 0, 0, 0), batch_norm=True,
         activation="Sigmoid"),  # M 66, N % 6 = 0, K % 4 = 2
    edge(c=7, m=11, h=7, w=7, activation="Relu"),  # M 49, N % 8 = 3, K % 4 = 3
    edge(c=10, m=9, h=7, w=14, kernel=(1, 1), pads=(0, 0, 0, 0),
         activation="Clip"),  # M 98, N % 8 = 1, K % 4 = 2
    # AVX-512 puts up to 6 tokens on the lanes (M 51: 3), AVX2 6 in a token vector.
    edge(c=5, m=9, h=6, w=9, activation="Relu"),  # M 54, N % 8 = 1
]


TILE_TOKENS = {"x86-avx2": 16, "x86-avx512": 48, "arm-neon": 8}
READS_PATCHES = {"x86-avx2": True, "x86-avx512": True, "arm-neon": False}  # NEON: Im2Col


def layer_pixels(case: ConvCase) -> int:
    """Output pixels of the case's conv (one image)."""
    model, _ = build(case)
    inferred = onnx.shape_inference.infer_shapes(model)
    name = inferred.graph.node[0].output[0]
    conv = next(v for v in [*inferred.graph.value_info, *inferred.graph.output]
                if v.name == name)
    dims = [d.dim_value for d in conv.type.tensor_type.shape.dim]
    return int(np.prod(dims[2:]))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] in TILE_TOKENS])
def test_dense_convs_run_channels_first(target, threads, compiler):
    """A dense conv's Dense writes its output feature-major where it has a tile of pixels,
    and reads a stride-1 conv's patches from X itself: no Im2Col there, and every Transpose
    left is a flip on its input's bytes. Against onnxruntime with check_against_onnxruntime's
    bound. On 3 threads the layers of fewer tiles than tasks split each tile's channel blocks
    between tasks."""
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=threads)
    for case in DENSE_CHANNELS_FIRST_CASES:
        model, feeds = build(case)
        result = compiler.compile(model, target, force_pattern="dense")
        graph = result.graph
        (dense,) = [node for node in graph.nodes if node.op == "Dense"]
        # Fewer pixels than a tile (16 AVX2 tokens, 48 AVX-512, 8 NEON) keep the panel form,
        # output channels on the lanes.
        channels_first = graph.tensors[dense.outputs[0]].layout == FEATURE_MAJOR
        assert channels_first == (layer_pixels(case) >= TILE_TOKENS[target]), case
        # A 1x1 conv's activations are X itself: neither patches nor Im2Col; patches are
        # read in place where the channels-first form runs.
        in_place = (READS_PATCHES[target] and channels_first and case.kernel != (1, 1)
                    and (case.strides == (1, 1) or reads_phases(case)))
        assert ("patches" in dense.attrs) == in_place, case
        if in_place and case.strides != (1, 1):
            assert_reads_phases(graph, case)
        assert not channels_first or all(
            graph.memory.offsets.get(node.outputs[0]) == graph.memory.offsets.get(node.inputs[0])
            for node in graph.nodes if node.op == "Transpose"), case
        layer = next(layer for layer in result.info["layers"] if layer["op"] == "Dense")
        assert (layer["layouts"]["output"] == "feature-major") == channels_first, layer
        runs.submit(result, feeds, functools.partial(check_against_onnxruntime, case),
                    label=repr(case))
    runs.flush()


# The feature-major GEMM's row per target: (ISA record, channels a block), as codegen/kernels.py
# builds them.
GEMM_TOKENS_ROWS = {"x86-avx2": ("avx2", 6), "x86-avx512": ("avx512f", 8),
                    "arm-neon": ("neon", 12)}


def run_dense_convs_counting_shapes(target: str, threads: int, compiler) -> list:
    """The channels-first cases above and the dense residual blocks (7 x 7: the channel-lane
    tail's sums; 7 x 11: a partial second vector) against onnxruntime with the bounds of the
    tests above; returns the feature-major GEMM's walk (gemm_params.TokensShape) of every
    channels-first Dense among them."""
    from sparsec.codegen import gemm_params

    isa, channels = GEMM_TOKENS_ROWS[target]
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=threads)
    shapes = []

    def submit(model, feeds, check, label):
        result = compiler.compile(model, target, force_pattern="dense")
        for node in result.graph.nodes:
            if node.op == "Dense" and result.graph.tensors[node.outputs[0]].layout == FEATURE_MAJOR:
                shapes.append(gemm_params.gemm_tokens_shape(result.graph, node, isa, channels))
        runs.submit(result, feeds, check, label=label)

    for case in DENSE_CHANNELS_FIRST_CASES:
        model, feeds = build(case)
        submit(model, feeds, functools.partial(check_against_onnxruntime, case), repr(case))
    for size in ((13, 7, 7), (13, 7, 11)):
        for shortcut in ("identity", "conv"):
            model, feeds = residual_block(shortcut, "Relu", density=1.0, size=size,
                                          scale=(13 * 9) ** -0.5)
            (expected,) = run_onnxruntime(model, feeds)

            def check(outputs, expected=expected):
                np.testing.assert_allclose(outputs["y"], expected, rtol=0, atol=1e-4)

            submit(model, feeds, check, f"{size} {shortcut} shortcut")
    runs.flush()
    return shapes


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] in TILE_TOKENS])
def test_dense_convs_on_small_maps_walk_channel_blocks(target, threads, compiler, monkeypatch):
    """Large weights on a map of a few tiles (ResNet-50's 7x7 convs) are walked by channel
    block over every tile packed first, K in chunks whose sums wait in Y (in scratch for a
    last tile short of a tile). The thresholds are lowered so that the small cases above
    take that form with chunks of 7 rows, which cut taps in two, and the residual blocks
    too. On 3 threads, tasks split the channel blocks after every tile is packed. The same
    sums, only in chunks."""
    from sparsec.codegen import gemm_params

    monkeypatch.setattr(gemm_params, "CACHED_WEIGHT_BYTES", 0)
    monkeypatch.setattr(gemm_params, "WALK_CHANNELS_TILES",
                        dict.fromkeys(gemm_params.WALK_CHANNELS_TILES, 16))
    monkeypatch.setattr(gemm_params, "CHUNK_ROWS", 7)
    shapes = run_dense_convs_counting_shapes(target, threads, compiler)
    walked = sum(shape.walk_channels for shape in shapes)
    chunked = sum(shape.walk_channels and shape.chunks > 1 for shape in shapes)
    assert walked >= 10 and chunked >= 8, (walked, chunked)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] in TILE_TOKENS])
def test_dense_convs_walk_each_tile_in_k_chunks(target, threads, compiler, monkeypatch):
    """Walked tile by tile, a packed tile goes K chunk by K chunk where its rows pass L1
    (AVX-512: gemm_params.TILE_CHUNK_BYTES), every channel block taking the chunk, its sums
    waiting in Y between chunks (in scratch for a last tile short of a tile, or of one or
    two tokens with the channels on the lanes). Chunks of 7 rows here, for every ISA, so
    that each case with more K rows takes them, taps cut in two. On 3 threads, the layers
    of fewer tiles than tasks split each tile's channel blocks, each task packing its own
    chunks. The same sums, only in chunks."""
    from sparsec.codegen import gemm_params

    isa, _ = GEMM_TOKENS_ROWS[target]
    monkeypatch.setattr(gemm_params, "TILE_CHUNK_BYTES", {isa: 7 * 4 * TILE_TOKENS[target]})
    shapes = run_dense_convs_counting_shapes(target, threads, compiler)
    chunked = sum(not shape.walk_channels and shape.chunks > 1 for shape in shapes)
    assert chunked >= 10, shapes


def residual_block(shortcut: str, activation: str, seed: int = 0, density: float = 0.1,
                   size: tuple[int, int, int] = (16, 9, 10),
                   scale: float = 1.0) -> tuple[onnx.ModelProto, dict]:
    """x -> 3x3 conv + Relu -> 3x3 conv + BatchNormalization, added to the shortcut (x itself,
    or a 1x1 conv of x: a downsampling block, where both Add operands are convs), then the
    activation (none, Relu, or Clip 0..6); `density` of each conv weight nonzero, `scale`
    times a standard normal; `size`: channels, height, width."""
    rng = np.random.default_rng(seed)
    c, h, w = size

    def sparse(*shape):
        return (scale * rng.standard_normal(shape)
                * (rng.random(shape) < density)).astype(np.float32)

    inits = [numpy_helper.from_array(sparse(c, c, 3, 3), "w1"),
             numpy_helper.from_array(sparse(c, c, 3, 3), "w2")]
    for name, value in zip(("scale", "shift", "mean", "var"),
                           (rng.random(c) + 0.5, rng.standard_normal(c),
                            rng.standard_normal(c), rng.random(c) + 0.5)):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "scale", "shift", "mean", "var"],
                              ["b2"])]
    other = "x"
    if shortcut == "conv":
        inits.append(numpy_helper.from_array(sparse(c, c, 1, 1), "ws"))
        nodes.append(helper.make_node("Conv", ["x", "ws"], ["s"]))
        other = "s"
    nodes.append(helper.make_node("Add", ["b2", other], ["sum"]))
    if activation == "Clip":
        inits += [numpy_helper.from_array(np.float32(0), "low"),
                  numpy_helper.from_array(np.float32(6), "high")]
        nodes.append(helper.make_node("Clip", ["sum", "low", "high"], ["y"]))
    elif activation:
        nodes.append(helper.make_node(activation, ["sum"], ["y"]))
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((1, c, h, w)).astype(np.float32)}


def check_fused_residual_blocks(target: str, compiler, pattern: str, **block) -> None:
    """Every residual_block(**block) form (both shortcuts, each activation) compiled with
    `pattern` leaves no Add or activation node, its last conv taking the residual, and
    matches onnxruntime to 1e-4 (the tests below say why that bound holds)."""
    runs = Runs(targets.resolve(target), compiler.cache_dir)
    for shortcut in ("identity", "conv"):
        for activation in ("Relu", "Clip", ""):
            model, feeds = residual_block(shortcut, activation, **block)
            result = compiler.compile(model, target, force_pattern=pattern)
            ops = [node.op for node in result.graph.nodes]
            assert "Add" not in ops and "Relu" not in ops and "Clip" not in ops, ops
            assert sum(len(node.inputs) == 4 for node in result.graph.nodes
                       if node.op == "Dense") == 1
            (expected,) = run_onnxruntime(model, feeds)

            def check(outputs, expected=expected):
                np.testing.assert_allclose(outputs["y"], expected, rtol=0, atol=1e-4)

            runs.submit(result, feeds, check, label=f"{shortcut} shortcut, {activation!r}")
    runs.flush()


@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] != "generic"])
def test_residual_add_and_activation_run_in_the_conv_epilogue(target, compiler):
    """No Add or activation node is left: the block's last conv adds the shortcut and
    activates as it stores (every SIMD target's token-tile kernels). Against onnxruntime on
    sums of at most 16*9 products: 1e-4 on outputs of magnitude up to 51 (measured) is 25 ulp
    or more, above the two summation orders' difference, and far below any wrong or missing
    term."""
    check_fused_residual_blocks(target, compiler, "1x1")


@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] in TILE_TOKENS])
def test_dense_convs_add_their_residual_as_they_store(target, compiler):
    """The same blocks with dense weights: the channels-first GEMM adds the shortcut, whole
    vectors and the last tile's 13 tokens (7 x 11 = 77 pixels; AVX-512 29 of 48, NEON 5 of 8)
    alike, with 13 channels (AVX2: two blocks of 6 and one; AVX-512: one of 8 and one of 5;
    NEON: one of 12 and one). Weights scaled by
    1/sqrt(13*9), so the outputs stay of the sparse blocks' magnitude and the tolerance above
    holds for the same reasons."""
    check_fused_residual_blocks(target, compiler, "dense", density=1.0, size=(13, 7, 11),
                                scale=(13 * 9) ** -0.5)


@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS
                                    if p.values[0] in ("x86-avx2", "x86-avx512")])
def test_dense_convs_on_7x7_maps_add_their_residual(target, compiler):
    """A 7x7 map's 49 pixels leave one token in the last tile (AVX2's 16-token tiles and
    AVX-512's 48), which runs with the channels on the lanes: it too adds the shortcut
    before the activation. 13 channels, weights scaled as above."""
    check_fused_residual_blocks(target, compiler, "dense", density=1.0, size=(13, 7, 7),
                                scale=(13 * 9) ** -0.5)


def test_pointwise_convs_at_batch_1_move_no_bytes(compiler):
    """Two sparse 1x1 convs in a row on x86-avx2: both Dense kernels read and write
    channels-first (feature-major), and every Transpose lower_conv wrote is a flip that
    plan_memory places on its input's bytes (compile-only: no run needed)."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((64, 32, 1, 1)) * (rng.random((64, 32, 1, 1)) < 0.1))
    w2 = (rng.standard_normal((32, 64, 1, 1)) * (rng.random((32, 64, 1, 1)) < 0.1))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="pw2")]
    graph = helper.make_graph(
        nodes, "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 14, 14])],
        [numpy_helper.from_array(w1.astype(np.float32), "w1"),
         numpy_helper.from_array(w2.astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = compiler.compile(model, "x86-avx2")
    final = result.graph
    dense = [n for n in final.nodes if n.op == "Dense"]
    assert len(dense) == 2 and dense[0].attrs["activation"] == "Relu"
    assert final.tensors[dense[0].inputs[0]].layout == FEATURE_MAJOR
    assert final.tensors[dense[1].outputs[0]].layout == FEATURE_MAJOR
    offsets = final.memory.offsets
    for node in final.nodes:
        if node.op == "Transpose" and node.outputs[0] in offsets and node.inputs[0] in offsets:
            assert offsets[node.outputs[0]] == offsets[node.inputs[0]], node


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] in TILE_TOKENS])
def test_pointwise_convs_walk_groups_of_tiles(target, threads, compiler):
    """Sparse 1x1 convs channels-first in and out walk groups of full token tiles per column
    (spmm_params.TILE_GROUP): 19 x 23 = 437 pixels are 13 full AVX2 tiles and 21 tokens (6
    and 53 on AVX-512, 27 and 5 on NEON), so one thread runs groups of 8 and 5 and the
    partial tile, and 2 or 3 threads split them into runs of 7 or 5 tiles with the partial
    tile in the last. The
    second conv adds the input as its residual. Against onnxruntime: sums of at most 24
    products of normal values, 1e-4 above their rounding and below any wrong or missing
    term."""
    rng = np.random.default_rng(5)

    def sparse(*shape):
        return (rng.standard_normal(shape) * (rng.random(shape) < 0.3)).astype(np.float32)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], name="pw2"),
             helper.make_node("Add", ["b", "x"], ["sum"]),
             helper.make_node("Relu", ["sum"], ["y"])]
    graph = helper.make_graph(
        nodes, "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 19, 23])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 19, 23])],
        [numpy_helper.from_array(sparse(24, 16, 1, 1), "w1"),
         numpy_helper.from_array(sparse(16, 24, 1, 1), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((1, 16, 19, 23)).astype(np.float32)}
    result = compiler.compile(model, target, force_pattern="1x1")
    dense = [n for n in result.graph.nodes if n.op == "Dense"]
    assert len(dense) == 2 and len(dense[1].inputs) == 4, dense  # the residual fused
    assert result.graph.tensors[dense[0].inputs[0]].layout == FEATURE_MAJOR
    (expected,) = run_onnxruntime(model, feeds)

    def check(outputs):
        np.testing.assert_allclose(outputs["y"], expected, rtol=0, atol=1e-4)

    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=threads)
    runs.submit(result, feeds, check, label=f"{threads} threads")
    runs.flush()


def test_unsupported_convs_are_refused_together(compiler):
    w3 = numpy_helper.from_array(np.ones((4, 2, 2, 2, 2), np.float32), "w3")
    nodes = [helper.make_node("Conv", ["x3", "w3"], ["y3"], name="volumetric"),
             helper.make_node("Conv", ["x", "wg"], ["y"], name="grouped_runtime", group=2)]
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("x3", TensorProto.FLOAT, [1, 2, 4, 4, 4]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("wg", TensorProto.FLOAT, [6, 2, 3, 3])],
        [helper.make_tensor_value_info("y3", TensorProto.FLOAT, [1, 4, 3, 3, 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 3, 3])], [w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError) as error:
        compiler.compile(model, "generic")
    message = str(error.value)
    assert "2 Conv node(s)" in message
    assert "'volumetric': 3-D convolution" in message
    assert "'grouped_runtime': a grouped Conv's weight must be a constant" in message


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_static_qdq_conv_model_lands_on_the_reference_grid(target, compiler, tmp_path):
    """onnxruntime's quantize_static in QDQ form: int8 weights behind DequantizeLinear and a
    QuantizeLinear/DequantizeLinear pair after each conv. sparsec folds the weights' dequantize
    and runs the convs in float32. Oracles: ONNX's reference evaluator, which computes the QDQ
    graph as written (float convs between the quantizers), and onnxruntime, which runs the convs
    in int8, where its int8 is exact (VNNI; without it its u8 x s8 pair sums saturate). Each
    output is requantized, so all land on the same int8 grid: they may differ only where a
    value sits within rounding of a midpoint between two codes, by one step of its scale."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    first = build(edge(c=3, m=8, h=12, w=12, batch_norm=True, activation="Relu"))[0]
    rng = np.random.default_rng(5)
    second = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    first.graph.initializer.append(numpy_helper.from_array(second, "W2"))
    first.graph.node.append(helper.make_node("Conv", ["y", "W2"], ["z"], pads=[1, 1, 1, 1]))
    first.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    first.opset_import[0].version = 21  # the reference evaluator's quantizers start at opset 19
    source = tmp_path / "float.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(first), source)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantized = tmp_path / "qdq.onnx"
    quantize_static(str(source), str(quantized), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(quantized))
    assert sum(node.op_type == "Conv" for node in model.graph.node) == 2
    feeds = {"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    from onnx.reference import ReferenceEvaluator

    oracles = {"reference": ReferenceEvaluator(model).run(None, feeds)[0]}
    if ONNXRUNTIME_INT8_ON_VNNI:
        oracles["onnxruntime"] = run_onnxruntime(model, feeds)[0]
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    scale = next(numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.name == last.input[1])
    result = compiler.compile(model, target)
    actual = sparsec.load(result.library).run(feeds)["z"]
    for oracle, expected in oracles.items():
        steps = np.abs(actual.astype(np.float64) - expected) / float(scale)
        assert steps.max() <= 1 + 1e-6 and np.mean(steps > 0.5) < 0.01, (oracle, steps.max())
