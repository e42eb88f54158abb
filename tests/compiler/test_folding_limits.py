"""Folding bombs: a constant node whose result is huge is refused, naming the node, the op and
the size, before the result is allocated, by every route a model takes into constant folding;
results under the limit still fold to onnxruntime's values; running out of memory anyway is a
one-line refusal, never a traceback or a killed process."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import sparsec
from sparsec import cli
from sparsec.cli import main
from sparsec.compiler import fold_sizes, frontend, limits
from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.compiler.options import CompileOptions
from sparsec.compiler.passes import fold_constants
from sparsec.errors import ResourceLimitError
from tests.compiler.passes.helpers import context
from tests.graphs import mlp

LIMIT = 1 << 20
"""The memory limit of the in-process cases: 1 MiB, so that every refused result is at least
that large and tracemalloc tells a refusal before allocation from one after."""

ADDRESS_SPACE = 512 << 20
"""RLIMIT_AS of the subprocess cases. `sparsec compile` refusing these models peaks at about
150 MB of address space (VmPeak, one BLAS thread, Python 3.11, numpy 2.4, onnx 1.23): over three
times that leaves room for other versions, while every bomb below is far larger."""


@dataclass
class Case:
    op: str
    feeds: dict[str, np.ndarray]  # by input name, in input order; "" marks an omitted input
    attrs: dict
    result_bytes: int
    opset: int = 17

    @property
    def inputs(self) -> list[str]:
        return [name if not name.startswith("-") else "" for name in self.feeds]


def _data(shape):
    """Distinct values, so that a result compared with onnxruntime's shows where each came from."""
    return np.arange(1, int(np.prod(shape)) + 1, dtype=np.float32).reshape(shape)


def _i64(*values):
    return np.array(values, np.int64)


# Each builder takes hypothesis' draw and `n`, the dimension the test makes huge or small; the
# other dimensions stay small, so the inputs are small and only the result can be large.
def _range(draw, n):
    start, delta = draw(st.integers(0, 1000)), draw(st.integers(1, 7))
    # A bound of shape [1] instead of a scalar: ONNX shape inference refuses it, the reference
    # evaluator does not (the bomb that got past inference). onnxruntime refuses it too, so the
    # small cases, checked against onnxruntime, keep scalars.
    shape = (1,) if n > LIMIT and draw(st.booleans()) else ()
    feeds = {k: np.full(shape, v, np.int64)
             for k, v in (("start", start), ("limit", start + n * delta), ("delta", delta))}
    return Case("Range", feeds, {}, n * 8)


def _constant_of_shape(draw, n):
    k = draw(st.integers(1, 8))
    return Case("ConstantOfShape", {"shape": _i64(n, k)}, {}, n * k * 4)


def _expand(draw, n):
    k = draw(st.integers(1, 8))
    return Case("Expand", {"x": _data((1, k)), "shape": _i64(n, k)}, {}, n * k * 4)


def _tile(draw, n):
    k = draw(st.integers(1, 8))
    return Case("Tile", {"x": _data((2, k)), "repeats": _i64(n, 1)}, {}, 2 * n * k * 4)


def _pad(draw, n):
    k, before = draw(st.integers(1, 8)), draw(st.integers(0, 3))
    return Case("Pad", {"x": _data((2, k)), "pads": _i64(before, 0, n, 0)}, {},
                (2 + before + n) * k * 4)


def _resize_sizes(draw, n):
    k = draw(st.integers(1, 8))
    return Case("Resize", {"x": _data((1, 1, 2, 2)), "-roi": None, "-scales": None,
                           "sizes": _i64(1, 1, n, k)}, {}, n * k * 4)


def _resize_scales(draw, n):
    scale = float(np.float32(max(n, 1)))  # what the model stores: float32
    return Case("Resize", {"x": _data((1, 1, 2, 2)), "-roi": None,
                           "scales": np.array([1, 1, scale, 1], np.float32)}, {},
                int(2 * scale) * 2 * 4)


def _one_hot(draw, n):
    k = draw(st.integers(1, 8))
    return Case("OneHot", {"indices": np.zeros(k, np.int64), "depth": np.array(n, np.int64),
                           "values": np.array([0, 1], np.float32)}, {}, k * n * 4)


def _center_crop_pad(draw, n):
    k = draw(st.integers(1, 8))
    return Case("CenterCropPad", {"x": _data((2, 2)), "shape": _i64(n, k)}, {}, n * k * 4,
                opset=18)


def _hann_window(draw, n):
    return Case("HannWindow", {"size": np.array(n, np.int64)}, {}, n * 4)


def _sparse_constant(draw, n):
    """A sparse Constant stores its nonzeros and declares its dense shape."""
    k = draw(st.integers(1, 8))
    dense = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(1, np.float32), "v"),
                                      numpy_helper.from_array(_i64(0), "i"), [n, k])
    return Case("Constant", {}, {"sparse_value": dense}, n * k * 4)


# Results that multiply their inputs' sizes: both inputs of about sqrt(n) elements.
def _sides(draw, n):
    side = max(int(n ** 0.5), 1)
    return side, draw(st.integers(side, side + 64))


def _outer(op, **attrs):
    def build(draw, n):
        rows, cols = _sides(draw, n)
        return Case(op, {"a": _data((rows, 1)), "b": _data((1, cols))}, attrs, rows * cols * 4)
    return build


def _where(draw, n):
    rows, cols = _sides(draw, n)
    return Case("Where", {"cond": np.ones((rows, 1), bool), "x": _data((1, cols)),
                          "y": _data(())}, {}, rows * cols * 4)


def _gather(draw, n):
    rows, cols = _sides(draw, n)
    return Case("Gather", {"data": _data((2, cols)), "indices": np.arange(rows) % 2}, {},
                rows * cols * 4)


def _non_zero(draw, n):
    rows, cols = _sides(draw, n // 4)
    return Case("NonZero", {"x": np.ones((rows, cols), bool)}, {}, 2 * rows * cols * 8)


def _dft(draw, n):
    k = draw(st.integers(1, 8))
    return Case("DFT", {"x": _data((1, k, 1)), "dft_length": np.array(n, np.int64)},
                {"axis": 1}, n * 2 * 4)


def _stft(draw, n):
    """Frames overlap: a signal of 2f samples gives about f frames of f bins each, a result
    that grows as the square of its input."""
    frame, step = max(2, math.isqrt(n)), draw(st.integers(1, 3))
    frames, bins = frame // step + 1, frame // 2 + 1
    return Case("STFT", {"signal": _data((1, 2 * frame, 1)),
                         "frame_step": np.array(step, np.int64), "-window": None,
                         "frame_length": np.array(frame, np.int64)}, {},
                frames * bins * 2 * 4)


def _concat(draw, n):
    parts = draw(st.integers(8, 32))
    part = _data(max(n // parts, 1))  # one array under every name: the inputs stay small
    return Case("Concat", {f"x{i}": part for i in range(parts)}, {"axis": 0},
                parts * part.size * 4)


BUILDERS = {
    "Range": _range, "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Tile": _tile,
    "Pad": _pad, "Resize-sizes": _resize_sizes, "Resize-scales": _resize_scales,
    "OneHot": _one_hot, "Constant-sparse": _sparse_constant, "CenterCropPad": _center_crop_pad,
    "HannWindow": _hann_window,
    "MatMul": _outer("MatMul"), "Einsum": _outer("Einsum", equation="ij,jk->ik"),
    "Add": _outer("Add"), "Where": _where, "Gather": _gather, "NonZero": _non_zero,
    "Concat": _concat, "DFT": _dft, "STFT": _stft,
}
# Results from products of two input sides, and NonZero, are bounded by their inputs: huge
# means past the limit, not past what a test can hold as inputs.
INPUT_BOUND = {"MatMul", "Einsum", "Add", "Where", "Gather", "NonZero", "Concat", "STFT"}


def _huge(key):
    top = 1 << 23 if key in INPUT_BOUND else 1 << 50
    return st.integers(LIMIT + 1, top)


def _ir_graph(case: Case) -> Graph:
    """The node alone in the IR, its inputs constants: what fold_constants sees, whatever the
    frontend let through."""
    tensors = {name: Tensor(name, value.shape, str(value.dtype), value)
               for name, value in case.feeds.items() if value is not None}
    return Graph(inputs=[], outputs=["out"], opset=case.opset, tensors=tensors,
                 nodes=[Node(case.op, case.inputs, ["out"], dict(case.attrs), "bomb")])


def _onnx_model(case: Case) -> onnx.ModelProto:
    """The node in a model, each numeric input passed through Abs so that shape inference cannot
    read its value at import: the route through the frontend's shape folding."""
    nodes, initializers, inputs = [], [], []
    for name, value in case.feeds.items():
        if value is None:
            inputs.append("")
            continue
        initializers.append(numpy_helper.from_array(value, name))
        if value.dtype == bool:
            inputs.append(name)
        else:
            nodes.append(helper.make_node("Abs", [name], [f"{name}_hidden"]))
            inputs.append(f"{name}_hidden")
    nodes += [helper.make_node(case.op, inputs, ["out"], name="bomb", **case.attrs),
              helper.make_node("ReduceSum", ["out"], ["y"], keepdims=0)]
    elem = TensorProto.INT64 if case.op in ("Range", "NonZero") else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "bomb", [], [helper.make_tensor_value_info("y", elem, [])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    return model


def _refused_before_allocating(fold, case: Case):
    # onnx imports an op's reference implementation when an evaluator first meets it: done
    # here, so that the module's memory is not counted as the node's.
    for op in (case.op, "Abs"):
        ReferenceEvaluator(helper.make_node(op, case.inputs, ["out"], **case.attrs),
                           opsets={"": case.opset})
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as refusal:
            fold()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(refusal.value)
    assert "'bomb'" in message and f"op {case.op}" in message, message
    assert limits.format_size(case.result_bytes) in message, message
    assert peak < LIMIT, f"{peak} bytes were allocated before the refusal"


def _fold_options():
    return dataclasses.replace(context(), options=CompileOptions(max_memory=LIMIT))


@pytest.mark.parametrize("key", BUILDERS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_huge_folded_result_is_refused_before_it_is_allocated(key, data):
    case = BUILDERS[key](data.draw, data.draw(_huge(key), label="n"))
    assert case.result_bytes > LIMIT
    _refused_before_allocating(lambda: fold_constants.run(_ir_graph(case), _fold_options()),
                               case)
    # Through the frontend too, where shape inference at import cannot size the result. Results
    # bounded by their inputs' shapes are sized by inference there already, and ONNX refuses a
    # Range of rank-1 bounds at import (the subprocess cases below take it through).
    rank1_range = case.op == "Range" and case.feeds["start"].ndim
    if key not in INPUT_BOUND and not rank1_range:
        _refused_before_allocating(lambda: frontend.import_model(_onnx_model(case),
                                                                 max_memory=LIMIT), case)


# onnx's reference evaluator refuses sparse constants whatever their size: nothing to compare.
@pytest.mark.parametrize("key", [key for key in BUILDERS if key != "Constant-sparse"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_result_under_the_limit_folds_to_onnxruntimes_values(key, data):
    case = BUILDERS[key](data.draw, data.draw(st.integers(1, 400), label="n"))
    graph = fold_constants.run(_ir_graph(case), _fold_options())
    folded = graph.tensors["out"].data
    assert folded.nbytes == case.result_bytes
    feeds = {name: value for name, value in case.feeds.items() if value is not None}
    model = helper.make_model(helper.make_graph(
        [helper.make_node(case.op, case.inputs, ["out"], **case.attrs)], "one",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for name, v in feeds.items()],
        [helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(folded.dtype),
                                       None)]),
        opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    np.testing.assert_allclose(folded, expected, rtol=0, atol=_tolerance(case))


def _tolerance(case: Case) -> float:
    """The same arithmetic on the same values is exact. But the window is 0.5 - 0.5 cos(x) in
    [0, 1], its cosines from two libms and float32 roundings: two float32 epsilons (2 ** -22)
    apart at most, absolute. A Fourier transform's output sums `points` products of a sample
    and a twiddle factor e^(-2 pi i k j / points); onnxruntime works in float32, the reference
    evaluator in numpy's FFT. Each product and addition is off by at most an epsilon (2 ** -23)
    of the running sum, itself at most the sum of the absolute samples; and a twiddle's angle,
    2 pi k j / points < 2 pi points, rounded to float32 is off by up to epsilon times that
    angle, which moves the twiddle as far (measured: 1.8e-5 at 23 points, samples 1 and 2)."""
    if case.op == "HannWindow":
        return 2.0 ** -22
    if case.op in ("DFT", "STFT"):
        samples = next(iter(case.feeds.values()))
        points = int(case.feeds.get("dft_length", case.feeds.get("frame_length")))
        return (2 + 2 * math.pi) * points * 2.0 ** -23 * float(np.abs(samples).sum())
    return 0.0


@pytest.mark.parametrize("node,feeds", [
    (helper.make_node("Split", ["x", "lengths"], ["a", "b", "c"], axis=1),
     {"x": _data((3, 10)), "lengths": _i64(2, 3, 5)}),
    (helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1), {"x": _data((3, 10))}),
    (helper.make_node("TopK", ["x", "k"], ["a", "b"], axis=0),
     {"x": _data((7, 3)), "k": _i64(4)}),
    (helper.make_node("Pad", ["x", "pads", "", "axes"], ["a"]),
     {"x": _data((2, 3, 4)), "pads": _i64(1, 0, 5, 2), "axes": _i64(2, 0)}),
    (helper.make_node("GatherND", ["x", "i"], ["a"], batch_dims=1),
     {"x": _data((2, 3, 4)), "i": np.zeros((2, 5, 1), np.int64)}),
    (helper.make_node("Einsum", ["x", "y"], ["a"], equation="...ij,...jk"),
     {"x": _data((2, 1, 3, 4)), "y": _data((5, 4, 6))}),
    (helper.make_node("Cast", ["x"], ["a"], to=TensorProto.DOUBLE), {"x": _data((3, 5))}),
], ids=["Split-lengths", "Split-equal", "TopK", "Pad-axes", "GatherND", "Einsum-ellipsis",
        "Cast-wider"])
def test_the_sizes_of_other_value_dependent_results_are_exact(node, feeds):
    """Ops whose refusal the cases above do not draw: the rule's sizes are the results'."""
    predicted = fold_sizes.predict(node, [feeds.get(name) for name in node.input])
    results = ReferenceEvaluator(node, opsets={"": 18}).run(None, feeds)
    assert [elements * itemsize for elements, itemsize in predicted] == \
        [np.asarray(r).nbytes for r in results]


def test_the_folded_total_is_bounded_though_each_result_fits():
    """Two results of 0.6 MiB each under a 1 MiB limit: the second would bring what the
    compile holds past it."""
    shape = _i64(600 * 1024 // 4)
    graph = Graph(inputs=[], outputs=["a", "b"], opset=17,
                  tensors={"s": Tensor("s", (1,), "int64", shape)},
                  nodes=[Node("ConstantOfShape", ["s"], ["a"], {}, "first"),
                         Node("ConstantOfShape", ["s"], ["b"], {}, "second")])
    with pytest.raises(ResourceLimitError, match=r"held while folding.*'second'"):
        fold_constants.run(graph, _fold_options())


def test_control_flow_is_not_folded():
    """What a branch or a loop body allocates is not known until it runs."""
    branch = helper.make_graph([helper.make_node("Constant", [], ["v"], value_float=1.0)],
                               "branch", [], [helper.make_tensor_value_info("v", 1, [])])
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
                 np.array(True), "c")),
             helper.make_node("If", ["c"], ["out"], name="bomb", then_branch=branch,
                              else_branch=branch),
             helper.make_node("ReduceSum", ["out"], ["y"], keepdims=0)]
    model = helper.make_model(helper.make_graph(
        nodes, "if", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ResourceLimitError, match=r"'bomb' \(op If\).*cannot be known"):
        fold_constants.run(frontend.import_model(model), _fold_options())


def test_memory_error_in_a_compile_is_a_refusal(monkeypatch, tmp_path, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(frontend, "import_model", exhausted)
    model = mlp()
    with pytest.raises(ResourceLimitError, match="ran out of memory"):
        sparsec.compile(model, target="generic", output=tmp_path / "m.so")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["compile", str(path), "--target", "generic", "-o",
                 str(tmp_path / "m.so")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: ran out of memory") and err.count("\n") == 1, err


def test_memory_error_in_any_command_is_one_error_line(monkeypatch, capsys):
    def exhausted(args):
        raise MemoryError
    monkeypatch.setitem(cli.COMMANDS, "targets", exhausted)
    assert main(["targets"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: out of memory") and err.count("\n") == 1, err


# Subprocess cases: the compile under an address-space limit, as a hostile model would meet it
# on a shared machine. A bomb that got past the checks would die of MemoryError there (or be
# killed), not take the machine's memory.
def _c(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _reduced(nodes, elem=TensorProto.INT64, initializers=()):
    nodes = nodes + [helper.make_node("ReduceSum", ["out"], ["y"], keepdims=0)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [], [helper.make_tensor_value_info("y", elem, [])], list(initializers)),
        opset_imports=[helper.make_opsetid("", 17)])
    return model


def _issue_range():
    """The model of the report, about 130 bytes: Range(0, 10**11, 1) -> ReduceSum."""
    bounds = [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("start", 0), ("limit", 10**11), ("delta", 1))]
    return _reduced([helper.make_node("Range", ["start", "limit", "delta"], ["out"],
                                      name="bomb")], initializers=bounds)


def _hidden_range():
    """The same Range with bounds of shape [1], reshaped by a shape inference cannot read, so
    that inference at import sees no shape and, alone, refuses the node instead of sizing it."""
    nodes = [_c("one", _i64(1)), helper.make_node("Abs", ["one"], ["n"]),
             helper.make_node("Reshape", ["one", "n"], ["rank1"])]
    for name, value in (("start", 0), ("limit", 10**11), ("delta", 1)):
        nodes += [_c(f"{name}0", np.array(value, np.int64)),
                  helper.make_node("Reshape", [f"{name}0", "rank1"], [name])]
    return _reduced(nodes + [helper.make_node("Range", ["start", "limit", "delta"], ["out"],
                                              name="bomb")])


def _loop():
    """10**12 iterations that each add a row to the result."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), _c("row", _data(16))], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, [16])])
    return _reduced([_c("trips", np.array(10**12, np.int64)), _c("go", np.array(True)),
                     helper.make_node("Loop", ["trips", "go"], ["out"], name="bomb",
                                      body=body)], TensorProto.FLOAT)


def _under_the_limit_over_the_memory():
    """1 GiB of Range: within --max-memory's 4 GiB, beyond the process's address space."""
    return _reduced([_c("start", np.array(0, np.int64)), _c("limit", np.array(1 << 27)),
                     _c("delta", np.array(1, np.int64)),
                     helper.make_node("Range", ["start", "limit", "delta"], ["out"],
                                      name="bomb")])


@pytest.mark.parametrize("build,message", [
    (_issue_range, r"node 'bomb' \(op Range\).* would take 745\.1 GiB"),
    (_hidden_range, r"node 'bomb' \(op Range\) would take 745\.1 GiB"),
    (_loop, r"node 'bomb' \(op Loop\) would run at compile time"),
    (_under_the_limit_over_the_memory, r"ran out of memory evaluating constant node 'bomb'"),
], ids=["issue-range", "rank1-range", "loop", "out-of-memory"])
def test_a_bomb_under_an_address_space_limit_is_a_clean_refusal(build, message, tmp_path):
    model = build()
    path = tmp_path / "bomb.onnx"
    onnx.save(model, path)
    limit = textwrap.dedent(f"""
        import resource, runpy, sys
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
        sys.argv = ["sparsec", "compile", {str(path)!r}, "--target", "generic", "--no-cache",
                    "-o", {str(tmp_path / "bomb.so")!r}]
        runpy.run_module("sparsec", run_name="__main__")
    """)
    # One BLAS thread: each OpenBLAS thread reserves its own buffers, which on a many-core
    # machine would spend the address space before sparsec starts.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", limit], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("sparsec: error: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert re.search(message, result.stderr), result.stderr
