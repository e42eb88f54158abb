"""Split, as torch's dynamo exporter writes `chunk` and `split`: every opset's way of giving
the sizes, lowered to Slices at import, against onnxruntime (exact: the parts are copies).
The node conformance cases give the sizes as a graph input, which a compiled shape cannot
take (they are refused), so constant sizes are tested here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import sparsec
from sparsec.errors import SparsecError, UnsupportedOperatorError
from tests.conftest import run_onnxruntime
from tests.graphs import model


def split_model(shape, axis, sizes, form):
    """x -> Split -> each part + 1 (so that every part is computed, not only copied out)."""
    dim = shape[axis]
    outs = [f"p{i}" for i in range(len(sizes))]
    attrs, inputs, inits, opset = {"axis": axis}, ["x"], [], 13
    if form == "input":  # opset 13 on
        inputs.append("split")
        inits.append(("split", np.array(sizes, np.int64)))
    elif form == "attribute":  # before 13
        attrs["split"] = list(sizes)
        opset = 11
    elif form == "num_outputs":  # opset 18: parts of ceil(dim / n)
        attrs["num_outputs"] = len(sizes)
        opset = 18
    nodes = [helper.make_node("Split", inputs, outs, name="split", **attrs)]
    nodes += [helper.make_node("Add", [p, "one"], [f"y{i}"]) for i, p in enumerate(outs)]
    part_shapes = [[*shape[:axis], s, *shape[axis + 1:]] for s in sizes]
    assert sum(sizes) == dim
    return model(nodes, [("x", shape)], [(f"y{i}", s) for i, s in enumerate(part_shapes)],
                 [*inits, ("one", np.float32(1))], opset=opset)


@st.composite
def splits(draw):
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    form = draw(st.sampled_from(["input", "attribute", "num_outputs", "equal"]))
    if form == "equal":
        parts = draw(st.sampled_from([p for p in range(1, dim + 1) if dim % p == 0]))
        sizes = [dim // parts] * parts
    elif form == "num_outputs":
        parts = draw(st.integers(1, dim))
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(0, dim - i * chunk)) for i in range(parts)]
        if 0 in sizes:  # onnxruntime refuses empty parts here
            sizes = [dim]
    else:
        cuts = sorted(draw(st.lists(st.integers(1, dim - 1), max_size=3, unique=True))
                      if dim > 1 else [])
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, dim])]
    return shape, axis % len(shape), sizes, form


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=splits())
def test_split_matches_onnxruntime(case, compiler):
    shape, axis, sizes, form = case
    onnx_model = split_model(shape, axis, sizes, form)
    result = compiler.compile(onnx_model, "generic")
    assert "Split" not in [node.op for node in result.graph.nodes]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    actual = sparsec.load(result.library).run({"x": x})
    for got, wanted in zip(actual.values(), run_onnxruntime(onnx_model, {"x": x})):
        np.testing.assert_array_equal(got, wanted)


def bare_split(sizes, declared) -> object:
    """x [2, 6] -> Split on axis 1 into outputs declared as [2, d] for d in `declared`, with
    `sizes` as the split input (None: a graph input, known at run time only)."""
    outputs = [(f"p{i}", [2, d]) for i, d in enumerate(declared)]
    inputs = [("x", [2, 6])]
    onnx_model = model([helper.make_node("Split", ["x", "split"], [n for n, _ in outputs],
                                         name="split", axis=1)],
                       inputs, outputs,
                       [] if sizes is None else [("split", np.array(sizes, np.int64))], opset=13)
    if sizes is None:
        onnx_model.graph.input.append(helper.make_tensor_value_info("split", 7, [2]))
    return onnx_model


def test_split_sizes_that_miss_the_axis_are_refused(compiler):
    with pytest.raises(SparsecError, match="split"):
        compiler.compile(bare_split([2, 3], [2, 3]), "generic")


def test_split_sizes_computed_at_run_time_are_refused(compiler):
    with pytest.raises(UnsupportedOperatorError, match="computed at run time"):
        compiler.compile(bare_split(None, [2, 4]), "generic")
