import dataclasses

import numpy as np
import pytest
from onnx import helper

from sparsec.codegen import targets
from sparsec.codegen.costs import cost_model
from sparsec.compiler import frontend
from sparsec.compiler.ir import SPARSE_PATTERNS
from sparsec.compiler.passes import (
    SparseKernelCost,
    StreamedWeights,
    WeightStream,
    detect_sparsity,
)
from sparsec.compiler.patterns import BITMASK, Pattern
from sparsec.compiler.verify import verify
from sparsec.errors import SparsecError
from tests.compiler.passes.helpers import context
from tests.graphs import mlp, model


def test_block_counts_and_fill():
    w = np.zeros((8, 32), np.float32)
    w[0:4, 0] = 1.0  # one full 4x1 block
    w[5, 16:32] = 2.0  # one full 1x16 block
    info = detect_sparsity.analyse(w, context().cost)
    assert info.block_stats["4x1"] == (17, 20 / 68)
    assert info.block_stats["1x16"] == (5, 20 / 80)
    assert info.block_stats["1x1"] == (20, 1.0)
    assert info.density == 20 / 256


@pytest.mark.parametrize("pattern", SPARSE_PATTERNS)
def test_pack_blocks_round_trips(pattern):
    rows, cols = Pattern(pattern).block
    rng = np.random.default_rng(0)
    w = rng.standard_normal((19, 35)).astype(np.float32) * (rng.random((19, 35)) < 0.2)
    packed = detect_sparsity.pack_blocks(w, rows, cols)
    kb, nb = -(-19 // rows), -(-35 // cols)
    dense = np.zeros((kb * rows, nb * cols), np.float32)
    for block_row in range(kb):
        for j in range(packed.row_ptr[block_row], packed.row_ptr[block_row + 1]):
            c = packed.col_idx[j]
            dense[block_row * rows:(block_row + 1) * rows, c * cols:(c + 1) * cols] = \
                packed.values[j]
    np.testing.assert_array_equal(dense[:19, :35], w)
    assert packed.num_blocks == Pattern(pattern).count(w)[0]


COST = SparseKernelCost(dense_per_element=0.02, per_block={"1x1": 0.4, "4x1": 0.5, "1x16": 0.4})


def test_choice_follows_the_cost_model():
    full = np.ones((64, 64), np.float32)
    info = detect_sparsity.analyse(full, COST)
    assert info.pattern == "dense" and info.packed is None
    assert "dense is cheapest; best sparse 1x16 would cost" in info.reason
    sparse = np.zeros((64, 64), np.float32)
    sparse[::8, :16] = 1.0  # 8 full 1x16 blocks: 3.2 ns against 82 ns dense
    info = detect_sparsity.analyse(sparse, COST)
    assert info.pattern == "1x16" and info.packed.num_blocks == 8
    assert info.reason.startswith("1x16: 8 nonzero blocks, fill 100%")


def test_patterns_without_kernels_are_never_chosen():
    w = np.zeros((64, 64), np.float32)
    w[:16, 0] = 1.0  # ideal 16x1 blocks, but COST offers no 16x1 kernel
    assert detect_sparsity.analyse(w, COST).pattern in ("1x1", "4x1", "1x16")


def test_sparse_weight_is_packed_through_the_pass():
    sparse = detect_sparsity.run(frontend.import_model(mlp(k=64, n=64, density=0.02)), context())
    info = sparse.tensors["w"].sparsity
    assert info.pattern in SPARSE_PATTERNS and info.packed is not None
    assert "predicted" in info.reason


def test_forced_pattern_overrides_the_choice():
    info = detect_sparsity.analyse(np.ones((8, 8), np.float32), COST, force="4x1")
    assert info.pattern == "4x1" and info.reason.startswith("4x1: requested")
    with pytest.raises(SparsecError, match="no kernel for it"):
        detect_sparsity.analyse(np.ones((8, 8), np.float32), COST, force="4x4")


def test_a_per_activation_cost_adds_k_elements_a_row_to_every_form():
    w = np.zeros((32, 8), np.float32)
    w[::4] = 1.0  # every fourth row of K: 4x1 blocks of one nonzero
    info = detect_sparsity.analyse(w, COST)
    plain = detect_sparsity.predicted_costs(w, info.block_stats, COST)
    packed = detect_sparsity.predicted_costs(
        w, info.block_stats, dataclasses.replace(COST, per_activation=0.5))
    assert plain.keys() == packed.keys()
    for pattern, ns in plain.items():
        assert packed[pattern] == pytest.approx(ns + 32 * 0.5)


def test_no_sparse_kernels_means_dense():
    cost = SparseKernelCost(dense_per_element=1.0, per_block={})
    info = detect_sparsity.analyse(np.zeros((4, 4), np.float32), cost)
    assert info.pattern == "dense" and "no sparse kernel" in info.reason


def test_gemm_trans_b_is_folded_into_the_weight():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # N x K
    m = model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [("x", [2, 4])],
              [("y", [2, 3])], [("w", w)])
    graph = detect_sparsity.run(frontend.import_model(m), context())
    verify(graph, "detect")
    assert graph.nodes[0].attrs["transB"] == 0
    np.testing.assert_array_equal(graph.tensors["w"].data, w.T)


def test_shared_transposed_weight_gets_its_own_copy():
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1),
             helper.make_node("MatMul", ["a", "w"], ["y"])]
    graph = detect_sparsity.run(frontend.import_model(
        model(nodes, [("x", [2, 4])], [("y", [2, 4])], [("w", w)])), context())
    verify(graph, "detect")
    assert graph.nodes[0].inputs[1] != "w" and graph.nodes[1].inputs[1] == "w"
    np.testing.assert_array_equal(graph.tensors["w"].data, w)
    np.testing.assert_array_equal(graph.tensors[graph.nodes[0].inputs[1]].data, w.T)


def test_transposed_weight_that_is_an_output_keeps_its_original():
    w = np.arange(20, dtype=np.float32).reshape(5, 4)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1),
             helper.make_node("Gemm", ["x", "w"], ["z"], transB=1)]
    m = model(nodes, [("x", [2, 4])], [("y", [2, 5]), ("z", [2, 5]), ("w", [5, 4])],
              [("w", w)])
    graph = detect_sparsity.run(frontend.import_model(m), context())
    verify(graph, "detect")
    np.testing.assert_array_equal(graph.tensors["w"].data, w)
    assert graph.nodes[0].inputs[1] == graph.nodes[1].inputs[1] == "w::transposed"


# --- streamed forms: the weight-bandwidth term and BITMASK (x86-amx) --------------------------

STREAM = WeightStream(cache_bytes=4096, cached_bytes_per_ns=100.0, memory_bytes_per_ns=10.0)
# per 4x16 block about 100 times the dense kernel's per element, as on x86-amx (copying B)
STREAMED = SparseKernelCost(dense_per_element=0.001, per_block={"4x16": 0.1},
                            per_element={BITMASK: 0.002},
                            streamed={p: StreamedWeights(16, STREAM)
                                      for p in ("dense", "4x16", BITMASK)},
                            value_bytes=1)


def unstructured(k: int, n: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 100, (k, n)) * (rng.random((k, n)) < density)).astype(np.int8)


def test_streamed_cost_is_the_larger_of_compute_and_reading_the_weights():
    w = unstructured(128, 64, 0.25)  # 8 KiB: beyond the 4 KiB cache
    nonzeros = int(np.count_nonzero(w))
    stats = {BITMASK: (nonzeros, nonzeros / w.size),
             "4x16": (Pattern("4x16").count(w)[0], 1.0)}
    costs = detect_sparsity.predicted_costs(w, stats, STREAMED)
    # dense: 8192 bytes at 10 bytes/ns once per 16 rows, over its compute of 8.2 ns a row
    assert costs["dense"] == pytest.approx(8192 / 10 / 16)
    # BITMASK: the nonzeros and a bit per weight (3 KiB) fit the cache: compute bound
    stored = nonzeros + 8192 / 8
    assert stored < 4096 and costs[BITMASK] == pytest.approx(max(8192 * 0.002,
                                                                  stored / 100 / 16))
    blocks = stats["4x16"][0]
    assert costs["4x16"] == pytest.approx(max(blocks * 0.1, blocks * 64 / 10 / 16))
    cached = unstructured(32, 64, 0.25)  # 2 KiB: read from the cache
    assert detect_sparsity.predicted_costs(cached, {}, STREAMED)["dense"] == pytest.approx(
        max(2048 * 0.001, 2048 / 100 / 16))


def test_bitmask_is_chosen_where_the_weights_stream_from_memory():
    big = detect_sparsity.analyse(unstructured(128, 64, 0.3), STREAMED)
    assert big.pattern == BITMASK and big.packed is None
    assert big.block_stats[BITMASK][0] == np.count_nonzero(unstructured(128, 64, 0.3))
    assert big.reason.startswith(f"{BITMASK}: 70% zeros, dense tiles expanded from a bit mask")
    assert "8 KiB stream from beyond the 4 KiB cache" in big.reason
    small = detect_sparsity.analyse(unstructured(32, 64, 0.3), STREAMED)
    assert small.pattern == "dense" and "2 KiB stay in the 4 KiB cache" in small.reason
    # nearly dense: a bit per weight on top of 95 % of the values costs more than it saves
    assert detect_sparsity.analyse(unstructured(128, 64, 0.95), STREAMED).pattern == "dense"
    blocks = np.zeros((128, 64), np.int8)
    blocks[:8, :16] = 1  # two full 4x16 blocks: skipping beats any dense form
    assert detect_sparsity.analyse(blocks, STREAMED).pattern == "4x16"


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_x86_amx_gate_on_bert_base_shapes(weights):
    """The x86-amx cost model on BERT-base's weights at 70 % unstructured sparsity. In bf16 the
    768 x 3072 feed-forward weights (4.5 MiB) stream from beyond a Sapphire Rapids core's
    2 MiB L2 and go BITMASK; in int8 (2.3 MiB) streaming one byte per element every 32 rows
    costs less than the products, so they stay dense, as the 768 x 768 attention weights do
    (measured: codegen/kernels.py's AMX rows)."""
    cost = cost_model(targets.TARGETS["x86-amx"], weights)
    assert cost.value_bytes == (1 if weights == "int8" else 2)
    dtype = np.int8 if weights == "int8" else np.float32
    ffn = detect_sparsity.analyse(unstructured(768, 3072, 0.3).astype(dtype), cost)
    assert ffn.pattern == (BITMASK if weights == "bfloat16" else "dense"), ffn.reason
    assert "stream from beyond the 2048 KiB cache" in ffn.reason or ffn.pattern == BITMASK
    attention = detect_sparsity.analyse(unstructured(768, 768, 0.3).astype(dtype), cost)
    assert attention.pattern == "dense", attention.reason
    # x86-avx512 has no BITMASK kernel: it is neither offered nor accepted when forced
    avx512 = cost_model(targets.TARGETS["x86-avx512"], weights)
    assert BITMASK not in avx512.per_element and not avx512.streamed
    with pytest.raises(SparsecError, match="no kernel for it"):
        detect_sparsity.analyse(unstructured(16, 16, 0.3).astype(dtype), avx512, force=BITMASK)
