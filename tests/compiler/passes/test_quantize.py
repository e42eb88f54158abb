import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.passes import detect_sparsity, fuse, lower_conv, quantize
from sparsec.compiler.verify import verify
from sparsec.errors import SparsecError
from tests.compiler.passes.helpers import context
from tests.graphs import mlp, model


def quantized(m, mode="dynamic", target="generic", mixed_precision=False):
    """The graph before and after quantize; every layer lowered unless mixed_precision."""
    ctx = context(target, quantize=mode, mixed_precision=mixed_precision)
    before = fuse.run(detect_sparsity.run(frontend.import_model(m), ctx), ctx)
    after = quantize.run(before, ctx)
    verify(after, "quantize")
    return before, after


def test_dense_reads_int8_codes_and_scales():
    before, after = quantized(mlp(k=8, n=4, density=0.5))
    (node,) = after.nodes
    assert node.op == "Dense" and node.attrs["quantize"] == "dynamic"
    codes, scales = (after.tensors[name] for name in (node.inputs[1], node.inputs[3]))
    assert codes.dtype == "int8" and codes.shape == (8, 4)
    assert scales.dtype == "float32" and scales.shape == (4,)
    assert codes.sparsity is not None
    assert before.nodes[0].inputs[1] not in after.tensors  # the fp32 weight is gone
    assert node.inputs[2] == before.nodes[0].inputs[2]  # the bias stays


def test_without_quantize_the_graph_is_unchanged():
    before, after = quantized(mlp(k=8, n=4, density=0.5), mode=None)
    assert after.to_text() == before.to_text()


def test_shared_weight_is_quantized_once():
    w = np.arange(16, dtype=np.float32).reshape(4, 4) - 8
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    _, after = quantized(model(nodes, [("x", [2, 4])], [("y", [2, 4])], [("w", w)]))
    assert after.nodes[0].inputs[1] == after.nodes[1].inputs[1]
    assert sum(t.dtype == "int8" for t in after.tensors.values()) == 1


def test_weight_with_inf_is_refused():
    w = np.ones((4, 4), np.float32)
    w[1, 2] = np.inf
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    with pytest.raises(SparsecError, match="node 'proj'.*inf or NaN.*without --quantize"):
        quantized(model(nodes, [("x", [2, 4])], [("y", [2, 4])], [("w", w)]))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
                  elements=st.floats(-1e6, 1e6, width=32)))
@example(np.array([[3.646e-42]], np.float32))  # a subnormal step once rounded down, clipping 130
def test_codes_are_symmetric_and_within_half_a_step(w):
    codes, scale = quantize.quantize_weight(w)
    assert codes.dtype == np.int8 and np.all(np.abs(codes.astype(int)) <= 127)
    assert np.all(scale > 0)
    # the largest magnitude of each column maps to +-127 (unless its step is not a normal float)
    full_range = np.max(np.abs(w), axis=0, initial=0) / 127 >= np.finfo(np.float32).tiny
    assert np.all(np.max(np.abs(codes.astype(int)), axis=0)[full_range] == 127)
    error = np.abs(codes * scale.astype(np.float64) - w)
    assert np.all(error <= scale * (0.5 + 1e-5))


def test_bf16_marks_dense_nodes_and_chooses_pairs_by_bf16_cost():
    """--dtype bf16: the weight stays float32 (the kernel rounds it), the node multiplies in
    bf16, and the pattern is the bf16 kernels' choice: 2x1 pairs for a sparse weight."""
    rng = np.random.default_rng(0)
    sparse = (rng.standard_normal((64, 32)) * (rng.random((64, 32)) < 0.05)).astype(np.float32)
    dense = rng.standard_normal((32, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["y"])]
    _, after = quantized(model(nodes, [("x", [4, 64])], [("y", [4, 16])],
                               [("w0", sparse), ("w1", dense)]), mode="bf16")
    first, second = after.nodes
    assert first.attrs["precision"] == second.attrs["precision"] == "bf16"
    weights = [after.tensors[node.inputs[1]] for node in (first, second)]
    assert [w.dtype for w in weights] == ["float32", "float32"]
    assert weights[0].sparsity.pattern == "2x1" and weights[1].sparsity.pattern == "dense"
    assert "2x1" in weights[0].sparsity.block_stats


def _pruned_1x16(rng, k, n):
    keep = np.kron(rng.random((k, n // 16)) < 0.1, np.ones((1, 16)))
    return (rng.standard_normal((k, n)) * keep).astype(np.float32)


@pytest.mark.parametrize("mode", ["dynamic", "bf16"])
def test_layers_faster_in_float32_keep_it_and_say_why(mode):
    """x86-avx2: a weight pruned in 1x16 blocks fills a quarter of int8's 4x1 groups (half of
    bf16's 2x1 pairs) while float32 has a 1x16 kernel, so it stays float32 and its reason says
    so; a weight pruned in 4x1 blocks is lowered to int8. In bf16 it stays float32 as well:
    AVX2 has no bf16 arithmetic, and widening each token tile's pairs back to floats costs
    more than the half-size weights save (codegen/costs.WIDENED_BF16_PACK_NS).
    mixed_precision=False lowers both."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="rows"),
             helper.make_node("MatMul", ["h", "w1"], ["y"], name="blocks")]
    blocks = np.kron(rng.random((96, 64)) < 0.1, np.ones((4, 1))) * rng.standard_normal((384, 64))
    m = model(nodes, [("x", [128, 384])], [("y", [128, 64])],
              [("w0", _pruned_1x16(rng, 384, 384)), ("w1", blocks.astype(np.float32))])

    def lowered(graph):
        return [node.attrs.get("quantize") == "dynamic" or node.attrs.get("precision") == "bf16"
                for node in graph.nodes]

    before, after = quantized(m, mode, "x86-avx2", mixed_precision=True)
    assert lowered(after) == [False, mode == "dynamic"]
    kept = after.tensors[after.nodes[0].inputs[1]]
    assert kept.dtype == "float32" and kept.sparsity.pattern == "1x16"
    expected = {"dynamic": "int8 4x1", "bf16": "bf16 2x1"}[mode]
    assert f"kept float32: {expected} is predicted" in kept.sparsity.reason
    if mode == "bf16":
        blocks = after.tensors[after.nodes[1].inputs[1]]
        assert blocks.sparsity.pattern == "4x1"
        assert "kept float32: bf16 2x1 is predicted" in blocks.sparsity.reason
    _, every = quantized(m, mode, "x86-avx2", mixed_precision=False)
    assert lowered(every) == [True, True]


def test_forced_pattern_lowers_every_layer():
    """A pinned pattern (kernel tests, benchmarks) is a request for exactly that kernel."""
    m = mlp(k=384, n=384, m=128, density=0.1, seed=1)
    ctx = context("x86-avx2", quantize="dynamic")
    ctx = dataclasses.replace(ctx, options=dataclasses.replace(ctx.options, force_pattern="4x1"))
    graph = fuse.run(detect_sparsity.run(frontend.import_model(m), ctx), ctx)
    (node,) = quantize.run(graph, ctx).nodes
    assert node.attrs["quantize"] == "dynamic"
    _, unforced = quantized(m, "dynamic", "x86-avx2", mixed_precision=True)
    assert "quantize" not in unforced.nodes[0].attrs  # unstructured: float32's 1x1 is faster


def test_convs_and_single_rows_keep_float32_where_int8_pays_for_layout():
    """x86-avx2, mixed precision: no int8 row writes channels-first, so an int8 conv's
    output would be transposed back for the next layer, and an int8 row computes whole
    32-row token tiles. A 3x3 stem on 3 channels (K = 27) and a classifier on one row stay
    float32, their reasons saying so; a 128-row 4x1-pruned MatMul, with neither cost, is
    still lowered. mixed_precision=False lowers all three."""
    rng = np.random.default_rng(2)
    blocks = np.kron(rng.random((96, 64)) < 0.1, np.ones((4, 1))) * rng.standard_normal((384, 64))
    nodes = [helper.make_node("Conv", ["x", "stem"], ["c"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "head"], ["y"], name="head"),
             helper.make_node("MatMul", ["t", "w"], ["z"], name="rows")]
    m = model(nodes, [("x", [1, 3, 32, 32]), ("t", [128, 384])], [("y", [1, 10]), ("z", [128, 64])],
              [("stem", rng.standard_normal((32, 3, 3, 3)).astype(np.float32)),
               ("head", rng.standard_normal((32, 10)).astype(np.float32)),
               ("w", blocks.astype(np.float32))])

    def lowered(mixed_precision):
        ctx = context("x86-avx2", quantize="dynamic", mixed_precision=mixed_precision)
        graph = lower_conv.run(frontend.import_model(m), ctx)
        graph = quantize.run(fuse.run(detect_sparsity.run(graph, ctx), ctx), ctx)
        dense = {node.name: node for node in graph.nodes if node.op == "Dense"}
        return graph, {name: node.attrs.get("quantize") == "dynamic"
                       for name, node in dense.items()}, dense

    graph, chosen, dense = lowered(True)
    assert chosen == {"stem": False, "head": False, "rows": True}, chosen
    for name in ("stem", "head"):
        reason = graph.tensors[dense[name].inputs[1]].sparsity.reason
        assert "kept float32: int8 dense is predicted" in reason, reason
    _, every, _ = lowered(False)
    assert every == {"stem": True, "head": True, "rows": True}, every
