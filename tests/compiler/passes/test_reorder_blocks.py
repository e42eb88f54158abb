import dataclasses
import itertools
import time

import numpy as np
from onnx import helper

from sparsec.compiler import channel_groups, frontend
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes import detect_sparsity, fuse, reorder_blocks
from sparsec.compiler.verify import verify
from tests.compiler.passes.helpers import context
from tests.graphs import model


def reordered(m, **options):
    ctx = context()
    ctx.options = dataclasses.replace(ctx.options, **options)
    graph = fuse.run(detect_sparsity.run(frontend.import_model(m), ctx), ctx)
    graph = reorder_blocks.run(graph, ctx)
    verify(graph, "reorder-blocks")
    return graph


def shuffled_4x1(k: int, n: int, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A k x n weight pruned in full 4x1 blocks, then its rows shuffled: the structure a
    permutation of the rows can restore. Returns the weight and the shuffle."""
    rng = np.random.default_rng(seed)
    keep = np.repeat(rng.random((k // 4, n)) < density, 4, axis=0)
    weight = (rng.standard_normal((k, n)) * keep).astype(np.float32)
    shuffle = rng.permutation(k)
    return weight[shuffle], shuffle


def ffn(w1, w2, b1=None, extra=()) -> "onnx.ModelProto":  # noqa: F821
    k, n = w1.shape
    b1 = np.zeros(n, np.float32) if b1 is None else b1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["a"]),
             *extra,
             helper.make_node("MatMul", ["a2" if extra else "a", "w2"], ["y"])]
    return model(nodes, [("x", [8, k])], [("y", [8, w2.shape[1]])],
                 [("w1", w1), ("b1", b1), ("w2", w2)])


def test_shuffled_block_structure_is_restored():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2, _ = shuffled_4x1(64, 48, 0.2, seed=1)
    graph = reordered(ffn(w1, w2))
    producer, consumer = graph.nodes
    record = consumer.attrs["reorder"]
    assert sorted(record["permutation"]) == list(range(64)), "a bijection"
    stored = graph.tensors[consumer.inputs[1]]
    assert stored.sparsity.pattern == "4x1" and stored.sparsity.block_stats["4x1"][1] == 1.0
    assert record["after"]["predicted"] < record["before"]["predicted"]
    perm = np.asarray(record["permutation"])
    np.testing.assert_array_equal(stored.data, w2[perm])
    np.testing.assert_array_equal(graph.tensors[producer.inputs[1]].data, w1[:, perm])


def test_per_channel_constants_between_follow_the_permutation():
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2, _ = shuffled_4x1(64, 32, 0.25, seed=3)
    scale = rng.standard_normal(64).astype(np.float32)
    m = ffn(w1, w2, b1=rng.standard_normal(64).astype(np.float32),
            extra=[helper.make_node("Mul", ["a", "scale"], ["a2"])])
    m.graph.initializer.append(helper.make_tensor("scale", 1, [64], scale))
    graph = reordered(m)
    mul = next(n for n in graph.nodes if n.op == "Mul")
    perm = np.asarray(graph.nodes[0].attrs["reorder"]["permutation"])
    constant = next(graph.tensors[n] for n in mul.inputs if graph.tensors[n].is_constant)
    np.testing.assert_array_equal(constant.data, scale[perm])


def test_chains_that_cannot_fold_are_left_alone():
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2, _ = shuffled_4x1(64, 32, 0.25, seed=5)
    returned = ffn(w1, w2)
    returned.graph.output.append(helper.make_tensor_value_info("a", 1, [8, 64]))
    mixing = model([helper.make_node("MatMul", ["x", "w1"], ["h"]),
                    helper.make_node("Softmax", ["h"], ["a"], axis=-1),
                    helper.make_node("MatMul", ["a", "w2"], ["y"])],
                   [("x", [8, 16])], [("y", [8, 32])], [("w1", w1), ("w2", w2)])
    for m in (returned, mixing):
        graph = reordered(m)
        assert all("reorder" not in n.attrs for n in graph.nodes)
        assert next(n for n in graph.nodes if n.op == DENSE and n.inputs[1] == "w2")


def test_no_reorder_keeps_every_weight():
    rng = np.random.default_rng(6)
    w2, _ = shuffled_4x1(64, 48, 0.2, seed=7)
    graph = reordered(ffn(rng.standard_normal((16, 64)).astype(np.float32), w2),
                      reorder=False)
    np.testing.assert_array_equal(graph.tensors["w2"].data, w2)
    assert all("reorder" not in n.attrs for n in graph.nodes)


def test_full_blocks_are_not_searched():
    rng = np.random.default_rng(8)
    keep = np.repeat(rng.random((16, 32)) < 0.3, 4, axis=0)
    w2 = (rng.standard_normal((64, 32)) * keep).astype(np.float32)
    w1 = (rng.standard_normal((16, 64)) * np.repeat(rng.random((4, 64)) < 0.3, 4, axis=0)
          ).astype(np.float32)
    graph = reordered(ffn(w1, w2), force_pattern="4x1")
    assert "already full" in graph.nodes[0].attrs["reorder"]["result"]
    np.testing.assert_array_equal(graph.tensors[graph.nodes[1].inputs[1]].data, w2)


def jumping_clock(monkeypatch):
    """A machine so loaded that every clock reading is 1000 s after the last: any deadline
    passes as soon as it is set."""
    readings = itertools.count(step=1000.0)
    for name in ("perf_counter", "monotonic", "time"):
        monkeypatch.setattr(time, name, lambda: float(next(readings)))


def test_the_search_does_not_depend_on_the_clock(monkeypatch):
    features = np.random.default_rng(10).random((64, 48)) < 0.2

    def permutation(swaps=reorder_blocks.SWAPS_PER_CHAIN):
        return channel_groups.search(features, 4, 1, np.random.default_rng(reorder_blocks.SEED),
                                     swaps)

    calm = permutation()
    # Without the swaps the grouping alone gives another permutation: the swaps, which a
    # deadline used to cut short, are part of what must not depend on the clock.
    assert not np.array_equal(permutation(swaps=0), calm)
    jumping_clock(monkeypatch)
    np.testing.assert_array_equal(permutation(), calm)


def test_two_compiles_permute_alike_however_slow_the_machine(monkeypatch):
    rng = np.random.default_rng(1)  # a chain whose permutation the swaps change
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2 = (rng.standard_normal((64, 48)) * (rng.random((64, 48)) < 0.15)).astype(np.float32)
    calm = reordered(ffn(w1, w2))
    jumping_clock(monkeypatch)
    loaded = reordered(ffn(w1, w2))
    record = calm.nodes[-1].attrs["reorder"]
    assert "permutation" in record
    assert loaded.nodes[-1].attrs["reorder"] == record
    for node in calm.nodes:
        for name in node.inputs[1:]:
            if name and calm.tensors[name].is_constant:
                np.testing.assert_array_equal(loaded.tensors[name].data, calm.tensors[name].data)
