import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.compiler import frontend
from sparsec.compiler.passes import detect_sparsity, fuse
from sparsec.compiler.verify import verify
from tests.compiler.passes.helpers import context, ir, run_passes
from tests.conftest import run_onnxruntime
from tests.graphs import model


def fused(m):
    ctx = context()
    graph = fuse.run(detect_sparsity.run(frontend.import_model(m), ctx), ctx)
    verify(graph, "fuse")
    return graph


def test_matmul_bias_relu_become_one_dense():
    weight = np.kron(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32))  # 2x2 blocks
    after = run_passes("""
        graph opset=17
          input  'x': float32[2x4]
          const  'b': float32[4] const
          const  'w': float32[4x4] const
          %0 MatMul('x', 'w') -> 'h': float32[2x4]  # node 'mm'
          %1 Add('h', 'b') -> 'hb': float32[2x4]
          %2 Relu('hb') -> 'y'
          output 'y': float32[2x4]
        """, detect_sparsity, fuse, constants={"w": weight})
    assert after == ir("""
        graph opset=17
          input  'x': float32[2x4]
          const  'b': float32[4] const
          const  'w': float32[4x4] const density=0.500 pattern=4x4 blocks=1
          %0 Dense('x', 'w', 'b') -> 'y'  {activation='Relu', activation_params=[], alpha=1.0, beta=1.0, source_op='MatMul', trans_a=0, trans_b=0}  # node 'mm'
          output 'y': float32[2x4]
        """)


def test_graph_output_is_never_fused_away():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Relu", ["mm"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("mm", [2, 4]), ("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Relu"]


def test_intermediate_with_two_readers_is_kept():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Relu", ["mm"], ["r"]),
             helper.make_node("Add", ["mm", "r"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Relu", "Add"]


def test_bias_that_varies_by_row_is_not_absorbed_into_nd_output():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 3, 4])], [("y", [2, 3, 4])],
                        [("w", w), ("b", np.ones((3, 4), np.float32))]))
    assert [n.op for n in graph.nodes] == ["Dense", "Add"]


def test_gemm_with_clip_absorbs_constant_bounds():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], alpha=0.5),
             helper.make_node("Clip", ["g", "lo", "hi"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])],
                        [("w", w), ("c", np.ones(4, np.float32)),
                         ("lo", np.float32(0)), ("hi", np.float32(6))]))
    (node,) = graph.nodes
    assert node.op == "Dense" and node.attrs["activation"] == "Clip"
    assert node.attrs["activation_params"] == (0.0, 6.0) and node.attrs["alpha"] == 0.5


def test_clip_with_runtime_bound_is_not_absorbed():
    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["g"]),
             helper.make_node("Clip", ["g", "lo"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4]), ("lo", [])], [("y", [2, 4])], [("w", w)]))
    assert [n.op for n in graph.nodes] == ["Dense", "Clip"]


def gelu_nodes(x: str, y: str, half_first: bool) -> list:
    """x * 0.5 * (1 + erf(x / sqrt 2)), the two Muls in the order `half_first` says."""
    nodes = [helper.make_node("Div", [x, "root2"], ["z"]),
             helper.make_node("Erf", ["z"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"])]
    if half_first:
        return nodes + [helper.make_node("Mul", [x, "half"], ["hx"]),
                        helper.make_node("Mul", ["hx", "e1"], [y])]
    return nodes + [helper.make_node("Mul", [x, "e1"], ["xe"]),
                    helper.make_node("Mul", ["xe", "half"], [y])]


GELU_CONSTANTS = [("root2", np.float32(np.sqrt(2))), ("one", np.float32(1)),
                  ("half", np.float32(0.5))]


def test_gelu_written_with_erf_becomes_the_dense_epilogue():
    for half_first in (False, True):
        w = np.ones((4, 4), np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])] + gelu_nodes("h", "y",
                                                                                half_first)
        graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])],
                            [("w", w)] + GELU_CONSTANTS))
        (node,) = graph.nodes
        assert (node.op, node.attrs["activation"]) == ("Dense", "Gelu")


def test_erf_that_is_not_gelu_is_left_alone():
    nodes = [helper.make_node("Div", ["x", "root2"], ["z"]),
             helper.make_node("Erf", ["z"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["x", "e1"], ["xe"]),
             helper.make_node("Mul", ["xe", "third"], ["y"])]
    graph = fused(model(nodes, [("x", [2, 4])], [("y", [2, 4])],
                        GELU_CONSTANTS + [("third", np.float32(1 / 3))]))
    assert [n.op for n in graph.nodes] == ["Div", "Erf", "Add", "Mul", "Mul"]


def test_residual_add_joins_the_layer_norm():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "beta"], ["y"], axis=-1)]
    graph = fused(model(nodes, [("a", [2, 8]), ("b", [2, 8])], [("y", [2, 8])],
                        [("g", np.ones(8, np.float32)), ("beta", np.zeros(8, np.float32))]))
    (node,) = graph.nodes
    assert (node.op, node.inputs) == ("AddLayerNorm", ["a", "b", "g", "beta"])


def test_residual_add_that_broadcasts_or_is_read_twice_stays():
    constants = [("g", np.ones(8, np.float32)), ("beta", np.zeros(8, np.float32))]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "beta"], ["y"], axis=-1)]
    graph = fused(model(nodes, [("a", [2, 8]), ("b", [1, 8])], [("y", [2, 8])], constants))
    assert [n.op for n in graph.nodes] == ["Add", "LayerNormalization"]
    graph = fused(model(nodes, [("a", [2, 8]), ("b", [2, 8])], [("s", [2, 8]), ("y", [2, 8])],
                        constants))
    assert [n.op for n in graph.nodes] == ["Add", "LayerNormalization"]


def attention_nodes(softmax_axis=-1):
    return [helper.make_node("MatMul", ["q", "kt"], ["s"]),
            helper.make_node("Div", ["s", "c"], ["sc"]),
            helper.make_node("Add", ["sc", "mask"], ["sm"]),
            helper.make_node("Softmax", ["sm"], ["p"], axis=softmax_axis),
            helper.make_node("MatMul", ["p", "v"], ["y"])]


ATTENTION_INPUTS = [("q", [1, 2, 4, 8]), ("kt", [1, 2, 8, 6]), ("v", [1, 2, 6, 8]),
                    ("mask", [1, 1, 1, 6])]


def test_scaled_masked_softmax_between_matmuls_is_one_attention():
    graph = fused(model(attention_nodes(), ATTENTION_INPUTS, [("y", [1, 2, 4, 8])],
                        [("c", np.float32(2.0))]))
    (node,) = graph.nodes
    assert node.op == "Attention" and node.inputs == ["q", "kt", "v", "mask"]
    assert (node.attrs["scale_op"], node.attrs["scale"]) == ("Div", 2.0)


def test_a_cast_to_the_same_type_does_not_hide_attention():
    """ViT's eager attention as the TorchScript exporter writes it: Softmax -> Cast(float)
    -> MatMul. The Cast is dropped; a same-type Cast the graph returns stays, and a Cast that
    changes the type is never dropped."""
    nodes = attention_nodes()
    nodes[3].output[0] = "p32"
    nodes.insert(4, helper.make_node("Cast", ["p32"], ["p"], to=TensorProto.FLOAT))
    graph = fused(model(nodes, ATTENTION_INPUTS, [("y", [1, 2, 4, 8])],
                        [("c", np.float32(2.0))]))
    assert [n.op for n in graph.nodes] == ["Attention"]
    returned = [helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
                helper.make_node("Cast", ["r"], ["ri"], to=TensorProto.INT32),
                helper.make_node("Cast", ["ri"], ["z"], to=TensorProto.FLOAT)]
    graph = fused(model(returned, [("x", [2, 4])], [("y", [2, 4]), ("z", [2, 4])]))
    assert [n.op for n in graph.nodes] == ["Relu", "Cast", "Cast", "Cast"]


def test_attention_is_not_fused_over_another_axis_or_a_returned_score():
    graph = fused(model(attention_nodes(softmax_axis=2), ATTENTION_INPUTS,
                        [("y", [1, 2, 4, 8])], [("c", np.float32(2.0))]))
    assert "Attention" not in [n.op for n in graph.nodes]
    graph = fused(model(attention_nodes(), ATTENTION_INPUTS,
                        [("p", [1, 2, 4, 6]), ("y", [1, 2, 4, 8])], [("c", np.float32(2.0))]))
    assert "Attention" not in [n.op for n in graph.nodes]


def test_attention_reads_and_writes_through_the_head_transposes():
    nodes = [helper.make_node("Transpose", ["qs"], ["q"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["vs"], ["v"], perm=[0, 2, 1, 3]),
             *attention_nodes()[:-1],
             helper.make_node("MatMul", ["p", "v"], ["ctx"]),
             helper.make_node("Transpose", ["ctx"], ["y"], perm=[0, 2, 1, 3])]
    inputs = [("qs", [1, 4, 2, 8]), ("kt", [1, 2, 8, 6]), ("vs", [1, 6, 2, 8]),
              ("mask", [1, 1, 1, 6])]
    graph = fused(model(nodes, inputs, [("y", [1, 4, 2, 8])], [("c", np.float32(2.0))]))
    (node,) = graph.nodes
    assert node.inputs == ["qs", "kt", "vs", "mask"] and node.outputs == ["y"]
    assert node.attrs["a_perm"] == node.attrs["v_perm"] == node.attrs["y_perm"] == (0, 2, 1, 3)


def test_transpose_that_moves_v_columns_stays():
    nodes = [helper.make_node("Transpose", ["vs"], ["v"], perm=[0, 1, 3, 2]),
             *attention_nodes()]
    inputs = [("q", [1, 2, 4, 8]), ("kt", [1, 2, 8, 6]), ("vs", [1, 2, 8, 6]),
              ("mask", [1, 1, 1, 6])]
    graph = fused(model(nodes, inputs, [("y", [1, 2, 4, 8])], [("c", np.float32(2.0))]))
    assert [n.op for n in graph.nodes] == ["Transpose", "Attention"]


def sdpa_nodes(mask_after_scores=False):
    """What torch exports for scaled_dot_product_attention with a mask: Q and K^T each
    scaled by 1/sqrt(sqrt(head)), the mask added, softmax, and Where(IsNaN(p), 0, p) so that a
    row with every key masked (-inf) gives zeros. The TorchScript exporter writes the mask's
    Where after the scores' MatMul."""
    mask = [helper.make_node("Where", ["keep", "zero", "minus_inf"], ["mask"])]
    return [
        *([] if mask_after_scores else mask),
        helper.make_node("Mul", ["q", "c"], ["qs"]),
        helper.make_node("Mul", ["kt", "c"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["s"]),
        *(mask if mask_after_scores else []),
        helper.make_node("Add", ["s", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["pz"]),
        helper.make_node("MatMul", ["pz", "v"], ["y"])]


SDPA_CONSTANTS = [("c", np.float32(0.5)), ("zero", np.float32(0.0)),
                  ("minus_inf", np.float32(-np.inf))]


def sdpa_model(mask_after_scores=False):
    graph = helper.make_graph(
        sdpa_nodes(mask_after_scores), "sdpa",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
         [("q", [1, 2, 4, 8]), ("kt", [1, 2, 8, 6]), ("v", [1, 2, 6, 8])]]
        + [helper.make_tensor_value_info("keep", TensorProto.BOOL, [1, 1, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in SDPA_CONSTANTS])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("mask_after_scores", [False, True])
def test_sdpa_with_its_nan_guard_is_one_attention(mask_after_scores):
    graph = fused(sdpa_model(mask_after_scores))
    assert [n.op for n in graph.nodes] == ["Where", "Attention"]
    node = graph.nodes[1]
    assert node.inputs == ["q", "kt", "v", "mask"]
    assert node.attrs["nan_to_zero"] is True
    assert (node.attrs["scale_op"], node.attrs["scale"]) == ("Mul", 0.25)


def test_nan_guard_with_another_reader_is_not_fused():
    m = sdpa_model()
    m.graph.output.append(helper.make_tensor_value_info("nan", TensorProto.BOOL, [1, 2, 4, 6]))
    graph = fused(m)
    assert "Attention" not in [n.op for n in graph.nodes]


@pytest.mark.parametrize("target", ["generic", "native"])
def test_sdpa_rows_with_every_key_masked_give_zeros_as_onnxruntime(target, compiler):
    """The NaN guard is in the kernel: a query row whose keys are all masked gives zeros,
    where softmax alone would give NaN; other rows as onnxruntime within float32 rounding."""
    m = sdpa_model()
    rng = np.random.default_rng(3)
    keep = rng.random((1, 1, 4, 6)) < 0.7
    keep[0, 0, 2, :] = False
    feeds = {"q": rng.standard_normal((1, 2, 4, 8), np.float32),
             "kt": rng.standard_normal((1, 2, 8, 6), np.float32),
             "v": rng.standard_normal((1, 2, 6, 8), np.float32), "keep": keep}
    result = compiler.compile(m, target)
    assert [n.op for n in result.graph.nodes] == ["Where", "Attention"]
    got = sparsec.load(result.library).run(feeds)["y"]
    (expected,) = run_onnxruntime(m, feeds)
    assert np.all(expected[0, :, 2] == 0) and np.all(got[0, :, 2] == 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=3e-5)


def test_position_bias_and_mask_become_one_attention_mask():
    """MPNet: (scores / c + position bias) + padding mask; the two additive terms are summed
    first so the kernel takes one mask."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Div", ["s", "c"], ["sc"]),
             helper.make_node("Add", ["sc", "bias"], ["sb"]),
             helper.make_node("Add", ["sb", "mask"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = ATTENTION_INPUTS + [("bias", [1, 2, 4, 6])]
    graph = fused(model(nodes, inputs, [("y", [1, 2, 4, 8])], [("c", np.float32(2.0))]))
    assert [n.op for n in graph.nodes] == ["Add", "Attention"]
    add, attention = graph.nodes
    assert add.inputs == ["bias", "mask"] and attention.inputs[3] == add.outputs[0]
    assert graph.tensors[add.outputs[0]].shape == (1, 2, 4, 6)


@pytest.mark.parametrize("change,reason", [
    (lambda nodes: nodes.__setitem__(1, helper.make_node("Div", ["s", "x"], ["sc"])),
     "Div '<unnamed node 1>' scales by a value that is not a constant scalar"),
    (lambda nodes: nodes.__setitem__(0, helper.make_node("Add", ["q2", "x"], ["s"])),
     "node '<unnamed node 0>' (op Add) computes the scores"),
    (lambda nodes: nodes.__setitem__(4, helper.make_node("Mul", ["p", "y0"], ["y"])),
     "node '<unnamed node 4>' (op Mul) reads the probabilities"),
])
def test_unfused_attention_says_which_node_broke_the_pattern(change, reason):
    nodes = attention_nodes()
    change(nodes)
    inputs = ATTENTION_INPUTS + [("x", [1]), ("q2", [1, 2, 4, 6]), ("y0", [1, 2, 4, 6])]
    out = [("y", [1, 2, 4, 6] if nodes[4].op_type == "Mul" else [1, 2, 4, 8])]
    graph = fused(model(nodes, inputs, out, [("c", np.float32(2.0))]))
    (softmax,) = [n for n in graph.nodes if n.op == "Softmax"]
    assert softmax.attrs["unfused"].startswith("attention at Softmax '<unnamed node 3>' not "
                                               "fused: ")
    assert reason in softmax.attrs["unfused"]


def test_report_lists_unfused_attention(tmp_path):
    from sparsec.reports import format_layers
    nodes = attention_nodes()
    nodes[1] = helper.make_node("Div", ["s", "x"], ["sc"])
    m = model(nodes, ATTENTION_INPUTS + [("x", [1])], [("y", [1, 2, 4, 8])])
    result = sparsec.compile_model(m, "generic", tmp_path / "m.so", cache_dir=tmp_path)
    assert "not fused: Div '<unnamed node 1>' scales by a value" in format_layers(result.info)


def test_prescaled_operands_and_a_scaled_product_fuse_with_one_scale():
    """The kernel applies one scale: with Q and K^T pre-scaled and the product divided too,
    the Divide is the kernel's and the operands' Muls stay."""
    nodes = sdpa_nodes()
    nodes[3:4] = [helper.make_node("MatMul", ["qs", "ks"], ["s0"]),
                  helper.make_node("Div", ["s0", "c"], ["s"])]
    m = sdpa_model()
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    graph = fused(m)
    assert [n.op for n in graph.nodes] == ["Where", "Mul", "Mul", "Attention"]
    assert (graph.nodes[3].attrs["scale_op"], graph.nodes[3].attrs["scale"]) == ("Div", 0.5)
