"""Attention as exporters write it, fused into one kernel, against onnxruntime on every target.

Hypothesis draws the batch, heads, sequence length, head size (multiples of the vector width
and not), the mask (none; per key, as from an attention mask; a full matrix; fully masked
rows) and the scale (Mul, Div, none); every case also checks that the fusion happened, so an
unfused fallback cannot pass for the kernel.

Tolerance: the kernel sums the same products as onnxruntime's MatMul, in another order and
with fused multiply-adds; each of the two products of at most 48 terms of magnitude below ~10
can differ by about 48 eps * 10 ~ 3e-5 in the worst case, far less in practice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import sparsec
from sparsec.compiler.ops import ADD_LAYER_NORM, ATTENTION
from tests.conftest import TARGET_PARAMS, run_onnxruntime

ROOT = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-5, 3e-5


def attention_model(batch, heads, seq, keys, head, mask_kind, scale_op, split_heads=False):
    """Q [B,H,S,D], K [B,H,T,D], V [B,H,T,D] inputs; K transposed as exporters do. With
    split_heads, Q and V come as [B,S,H,D] through head-splitting Transposes and the output
    goes back to [B,S,H,D], as in an encoder (the kernel reads and writes those in place)."""
    swap = [0, 2, 1, 3]
    if split_heads:
        inputs = [("q", [batch, seq, heads, head]), ("k", [batch, heads, keys, head]),
                  ("v", [batch, keys, heads, head])]
        nodes = [helper.make_node("Transpose", ["q"], ["qh"], perm=swap),
                 helper.make_node("Transpose", ["v"], ["vh"], perm=swap)]
    else:
        inputs = [("q", [batch, heads, seq, head]), ("k", [batch, heads, keys, head]),
                  ("v", [batch, heads, keys, head])]
        nodes = []
    q, v = ("qh", "vh") if split_heads else ("q", "v")
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", [q, "kt"], ["s"])]
    initializers = []
    current = "s"
    if scale_op:
        scale = np.float32(np.sqrt(head)) if scale_op == "Div" else np.float32(1 / np.sqrt(head))
        initializers.append(helper.make_tensor("c", TensorProto.FLOAT, [], [scale]))
        nodes.append(helper.make_node(scale_op, [current, "c"], ["scaled"]))
        current = "scaled"
    if mask_kind:
        mask_shape = {"keys": [batch, 1, 1, keys], "full": [batch, 1, seq, keys],
                      "heads": [1, heads, seq, keys]}[mask_kind]
        inputs.append(("mask", mask_shape))
        nodes.append(helper.make_node("Add", [current, "mask"], ["masked"]))
        current = "masked"
    nodes.append(helper.make_node("Softmax", [current], ["p"], axis=-1))
    if split_heads:
        nodes += [helper.make_node("MatMul", ["p", v], ["context"]),
                  helper.make_node("Transpose", ["context"], ["y"], perm=swap)]
    else:
        nodes.append(helper.make_node("MatMul", ["p", v], ["y"]))
    out_shape = [batch, seq, heads, head] if split_heads else [batch, heads, seq, head]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, dict(inputs)


def feeds_for(shapes, rng, masked_rows):
    feeds = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in shapes.items() if name != "mask"}
    if "mask" in shapes:
        keep = rng.random(shapes["mask"]) < 0.8
        if masked_rows:  # whole rows at the most negative float: softmax stays uniform
            keep[..., 0, :] = False
        feeds["mask"] = np.where(keep, 0, np.finfo(np.float32).min).astype(np.float32)
    return feeds


@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), seq=st.integers(1, 24),
       keys=st.integers(1, 40), head=st.sampled_from([1, 3, 8, 16, 20, 32]),
       mask_kind=st.sampled_from(["", "keys", "full", "heads"]),
       scale_op=st.sampled_from(["", "Mul", "Div"]), masked_rows=st.booleans(),
       split_heads=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_matches_onnxruntime(target, batch, heads, seq, keys, head, mask_kind,
                                       scale_op, masked_rows, split_heads, seed, compiler):
    onnx_model, shapes = attention_model(batch, heads, seq, keys, head, mask_kind, scale_op,
                                         split_heads)
    result = compiler.compile(onnx_model, target)
    ops = [n.op for n in result.graph.nodes]
    assert ops.count(ATTENTION) == 1
    assert ops.count("Transpose") == 1, "only K's transpose stays"
    if not compiler.can_run(target):
        return
    feeds = feeds_for(shapes, np.random.default_rng(seed), masked_rows and bool(mask_kind))
    got = sparsec.load(result.library).run(feeds)["y"]
    np.testing.assert_allclose(got, run_onnxruntime(onnx_model, feeds)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_minus_infinity_mask_gives_nan_rows_as_onnxruntime(target, compiler):
    """A row masked with -inf everywhere is 0/0 in softmax: NaN, in both."""
    onnx_model, shapes = attention_model(1, 2, 4, 8, 16, "full", "Mul")
    result = compiler.compile(onnx_model, target)
    if not compiler.can_run(target):
        return
    feeds = feeds_for(shapes, np.random.default_rng(3), False)
    feeds["mask"][..., 1, :] = -np.inf
    got = sparsec.load(result.library).run(feeds)["y"]
    wanted = run_onnxruntime(onnx_model, feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(wanted))
    np.testing.assert_allclose(got, wanted, rtol=RTOL, atol=ATOL)


def tiny_bert_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", TARGET_PARAMS)
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(heads=st.integers(1, 4), head=st.sampled_from([4, 8, 12, 20]),
       ffn_factor=st.integers(1, 4), seq=st.integers(2, 40), padded=st.data(),
       seed=st.integers(0, 2**16))
def test_encoder_blocks_match_onnxruntime(target, heads, head, ffn_factor, seq, padded, seed,
                                          compiler):
    """Whole encoder layers as Hugging Face exports them (the sample's builder at drawn sizes,
    weights pruned 90 % in 4x1 blocks): every fusion applies, and the hidden states match.
    Tolerance as the tiny-BERT sample's: LayerNorm rescales each row by up to ~1/std, so
    differences in the last bits of a sum show up at ~1e-5 relative to the row."""
    tiny_bert = tiny_bert_module()
    hidden = heads * head
    onnx_model = tiny_bert.tiny_bert(seed, hidden=hidden, num_heads=heads,
                                     ffn=hidden * ffn_factor, layers=1, vocab=64, seq=seq)
    result = compiler.compile(onnx_model, target)
    ops = [n.op for n in result.graph.nodes]
    assert ops.count(ATTENTION) == 1 and ops.count(ADD_LAYER_NORM) == 2
    assert "Erf" not in ops and "Softmax" not in ops
    if not compiler.can_run(target):
        return
    feeds = tiny_bert.tiny_bert_inputs(seed, vocab=64, seq=seq,
                                       padded=padded.draw(st.integers(0, seq - 1)))
    got = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, run_onnxruntime(onnx_model, feeds)[0], rtol=0, atol=1e-4)
