import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from sparsec.compiler import frontend
from sparsec.compiler.passes import plan_memory
from sparsec.compiler.verify import verify
from sparsec.errors import VerificationError
from tests.compiler.passes.helpers import context, ir, run_passes, selecting
from tests.conftest import run_onnxruntime
from tests.graphs import model


def chain(widths):
    """x -> Relu -> Relu ... with Reshape-free widths: each step its own intermediate."""
    nodes, inits = [], []
    current = "x"
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        out = "y" if i == len(widths) - 2 else f"h{i}"
        inits.append((f"w{i}", np.ones((k, n), np.float32)))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out]))
        current = out
    return model(nodes, [("x", [1, widths[0]])], [("y", [1, widths[-1]])], inits)


def test_chain_reuses_memory():
    graph = plan_memory.run(frontend.import_model(chain([16, 64, 64, 64, 16])), context())
    verify(graph, "plan")
    plan = graph.memory
    assert set(plan.offsets) == {"h0", "h1", "h2"}
    assert plan.offsets["h0"] == plan.offsets["h2"], "h0 is dead when h2 is born"
    assert plan.arena_bytes == 2 * 256


def test_inputs_outputs_constants_are_not_in_the_arena():
    graph = plan_memory.run(frontend.import_model(chain([4, 4])), context())
    assert graph.memory.offsets == {} and graph.memory.arena_bytes == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=2, max_size=8))
def test_live_tensors_never_overlap(widths):
    graph = plan_memory.run(frontend.import_model(chain(widths)), context())
    verify(graph, "plan")  # checks alignment, bounds and overlap of live tensors
    sizes = sum(-(-graph.tensors[n].nbytes // 64) * 64 for n in graph.memory.offsets)
    assert graph.memory.arena_bytes <= sizes


def test_kernel_scratch_lives_only_during_its_node():
    ctx = context()
    ctx.scratch_bytes = lambda graph, node: 1000 if graph.nodes.index(node) == 1 else 0
    graph = plan_memory.run(frontend.import_model(chain([16, 64, 64, 16])), ctx)
    verify(graph, "plan")
    (offset, size), = graph.memory.scratch.values()
    assert list(graph.memory.scratch) == [1] and size == 1000
    assert graph.memory.arena_bytes >= 2 * 256 + 1024


def fan_out_graph():
    """x -> a; a feeds b and the very last node, so a lives across everything in between."""
    w = np.ones((32, 32), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["c"]),
             helper.make_node("Tanh", ["c"], ["d"]),
             helper.make_node("Add", ["d", "a"], ["y"])]
    return model(nodes, [("x", [4, 32])], [("y", [4, 32])], [("w", w)])


def test_long_lived_tensor_is_not_overwritten():
    graph = plan_memory.run(frontend.import_model(fan_out_graph()), context())
    verify(graph, "plan")
    offsets = graph.memory.offsets
    assert offsets["a"] not in (offsets["b"], offsets["c"], offsets["d"])
    assert offsets["b"] == offsets["d"], "b is dead when d is born"


def test_verifier_catches_overlapping_live_tensors():
    graph = plan_memory.run(frontend.import_model(fan_out_graph()), context())
    graph.memory.offsets["c"] = graph.memory.offsets["a"]
    with pytest.raises(VerificationError, match="share arena bytes while both are live"):
        verify(graph, "plan")


def view_graph():
    """a = x.w; r = Reshape(a) is read by Relu; a itself is read again at the very end, so the
    shared bytes must outlive both names' readers."""
    w = np.ones((32, 32), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["b"]),
             helper.make_node("Reshape", ["b", "back"], ["c"]),
             helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Add", ["d", "a"], ["y"])]
    return model(nodes, [("x", [4, 32])], [("y", [4, 32])],
                 [("w", w), ("shape", np.array([8, 16], np.int64)),
                  ("back", np.array([4, 32], np.int64))])


def test_reshape_output_is_a_view_of_its_input():
    graph = plan_memory.run(frontend.import_model(view_graph()), context())
    verify(graph, "plan")  # the verifier merges a view with its source, then checks overlap
    offsets = graph.memory.offsets
    assert offsets["r"] == offsets["a"] and offsets["c"] == offsets["b"]
    assert offsets["b"] != offsets["a"], "a is still live (read by the last node) when b is born"
    assert offsets["d"] not in (offsets["a"], offsets["b"]), "d is born while a and c are live"


def test_verifier_catches_a_view_overlapping_a_live_tensor():
    graph = plan_memory.run(frontend.import_model(view_graph()), context())
    graph.memory.offsets["d"] = graph.memory.offsets["a"]  # a is read after d is born
    with pytest.raises(VerificationError, match="share arena bytes while both are live"):
        verify(graph, "plan")


def test_views_compute_what_onnxruntime_does(compiler):
    proto = view_graph()
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    expected = run_onnxruntime(proto, {"x": x})[0]
    for target in ("generic", "native"):
        got = compiler.load(proto, target).run({"x": x})["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def first_fit_by_scan(ranges, sizes):
    """first_fit as it was written before its lifetime index: every placed region scanned
    for each placement (quadratic), the definition the indexed version must match exactly."""
    order = sorted(ranges, key=lambda key: (-sizes[key], ranges[key][0], str(key)))
    placed, offsets = [], {}
    for key in order:
        first, last = ranges[key]
        size = plan_memory._align(max(sizes[key], 1))
        offset = 0
        for off, end in sorted((o, e) for o, e, f, l in placed if f <= last and first <= l):
            if offset + size <= off:
                break
            offset = max(offset, end)
        offsets[key] = offset
        placed.append((offset, offset + size, first, last))
    return offsets


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30),
                          st.sampled_from([0, 1, 64, 100, 256, 4096])), min_size=1, max_size=40))
def test_first_fit_places_as_the_full_scan_does(regions):
    ranges = {("tensor", f"t{i}"): (min(a, b), max(a, b)) for i, (a, b, _) in enumerate(regions)}
    sizes = {("tensor", f"t{i}"): size for i, (_, _, size) in enumerate(regions)}
    assert plan_memory.first_fit(ranges, sizes) == first_fit_by_scan(ranges, sizes)


def test_an_intermediate_takes_the_slot_of_one_that_died_as_ir_text():
    """Written as the IR before and after: 'c' is made once 'a' has been read for the last
    time, so it takes 'a''s slot; 'b' lives until the Add and keeps its own."""
    before = """
        graph opset=17
          input  'x': float32[256]
          %0 Relu('x') -> 'a': float32[256]  => sparsec_x_relu_ukernel_1x1__scalar
          %1 Sigmoid('a') -> 'b': float32[256]  => sparsec_x_sigmoid_ukernel_1x1__scalar
          %2 Tanh('b') -> 'c': float32[256]  => sparsec_x_tanh_ukernel_1x1__scalar
          %3 Relu('c') -> 'd': float32[256]  => sparsec_x_relu_ukernel_1x1__scalar
          %4 Add('b', 'd') -> 'y'  => sparsec_x_add_ukernel_1x1__scalar
          output 'y': float32[256]
        """
    assert run_passes(before, plan_memory, ctx=selecting("generic")) == ir(before) + (
        "  arena 3072 bytes\n"
        "    @0 'a'\n"
        "    @0 'c'\n"
        "    @1024 'b'\n"
        "    @2048 'd'\n")
