import numpy as np
import pytest
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.ir import SPARSE_PATTERNS, block_shape
from sparsec.compiler.passes import SparseKernelCost, detect_sparsity
from sparsec.compiler.verify import verify
from sparsec.errors import SparsecError
from tests.graphs import mlp, model
from tests.passes.helpers import context


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
    rows, cols = block_shape(pattern)
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
    assert packed.num_blocks == detect_sparsity.block_counts(w, rows, cols)


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
