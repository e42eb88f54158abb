"""A tiny BERT encoder as Hugging Face exports it (opset 17), built with onnx.helper, seeded.

Imported by make_samples.py. 2 layers, hidden 64, 4 heads, FFN 256, vocabulary 512, sequence
128, batch 1; inputs input_ids and attention_mask (int64), output last_hidden_state. The
graph has the exported shape of things: embeddings by Gather, LayerNormalization, attention
with Reshape/Transpose, a batched MatMul for scores, scale by Div, the additive mask made
from attention_mask at run time (Unsqueeze, Cast, Sub, Mul), Softmax, GELU written with Erf.
The encoder Linears are pruned by magnitude to 90 % in 4x1 blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, FFN, LAYERS, VOCAB, SEQ = 64, 4, 256, 2, 512, 128
HEAD = HIDDEN // HEADS


def prune_4x1(weight: np.ndarray, sparsity: float = 0.9) -> np.ndarray:
    k, n = weight.shape
    blocks = np.abs(weight).reshape(k // 4, 4, n).sum(axis=1)
    keep = np.repeat(blocks > np.quantile(blocks, sparsity), 4, axis=0)
    return (weight * keep).astype(np.float32)


class Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def param(self, name: str, shape, scale: float = 0.05) -> str:
        return self.const(name, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"/{output}", **attrs))
        return output

    def linear(self, x: str, k: int, n: int, prefix: str) -> str:
        weight = prune_4x1((self.rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))
        w = self.const(f"{prefix}.weight", weight)
        b = self.param(f"{prefix}.bias", (n,))
        return self.node("Add", [self.node("MatMul", [x, w], f"{prefix}/MatMul"), b],
                         f"{prefix}/Add")

    def layer_norm(self, x: str, prefix: str, width: int) -> str:
        gamma = self.const(f"{prefix}.weight",
                           (1 + 0.1 * self.rng.standard_normal(width)).astype(np.float32))
        beta = self.param(f"{prefix}.bias", (width,), 0.1)
        return self.node("LayerNormalization", [x, gamma, beta], f"{prefix}/LayerNorm",
                         axis=-1, epsilon=1e-12)


def tiny_bert(seed: int = 0, hidden: int = HIDDEN, num_heads: int = HEADS, ffn: int = FFN,
              layers: int = LAYERS, vocab: int = VOCAB, seq: int = SEQ,
              dynamic: bool = False) -> onnx.ModelProto:
    """The sample with its defaults; tests draw other sizes (hidden and ffn multiples of 4).
    dynamic: inputs and output of shape [batch_size, sequence_length] (ONNX dim_params), as
    exporters declare them, sequences of any length up to `seq` (the position table's rows):
    the position ids sliced to the input's length and the head reshapes inferring it."""
    HIDDEN, FFN, VOCAB, SEQ = hidden, ffn, vocab, seq  # the sizes under their usual names
    HEADS, HEAD = num_heads, hidden // num_heads
    b = Builder(seed)
    words = b.param("embeddings.word_embeddings.weight", (VOCAB, HIDDEN), 0.5)
    positions = b.param("embeddings.position_embeddings.weight", (SEQ, HIDDEN), 0.5)
    position_ids = b.const("embeddings.position_ids", np.arange(SEQ, dtype=np.int64)[None])
    if dynamic:  # position_ids[:, :length], the length from input_ids' shape
        length = b.node("Slice", [b.node("Shape", ["input_ids"], "embeddings/Shape"),
                                  b.const("one_i64", np.array([1], np.int64)),
                                  b.const("two_i64", np.array([2], np.int64))],
                        "embeddings/length")
        zero = b.const("zero_i64", np.array([0], np.int64))
        position_ids = b.node("Slice", [position_ids, zero, length, "one_i64"],
                              "embeddings/position_ids")
    x = b.node("Add", [b.node("Gather", [words, "input_ids"], "embeddings/word"),
                       b.node("Gather", [positions, position_ids], "embeddings/position")],
               "embeddings/sum")
    x = b.layer_norm(x, "embeddings.LayerNorm", HIDDEN)

    # (1 - mask) * min: 0 where attended, a large negative number where masked
    mask = b.node("Unsqueeze", ["attention_mask", b.const("axes_1_2", np.array([1, 2]))],
                  "mask/Unsqueeze")
    mask = b.node("Cast", [mask], "mask/Cast", to=TensorProto.FLOAT)
    mask = b.node("Sub", [b.const("one", np.float32(1)), mask], "mask/Sub")
    mask = b.node("Mul", [mask, b.const("minimum", np.float32(np.finfo(np.float32).min))],
                  "mask/Mul")

    tokens = -1 if dynamic else SEQ  # Reshape infers a dynamic length
    heads_shape = b.const("heads_shape", np.array([1, tokens, HEADS, HEAD], np.int64))
    hidden_shape = b.const("hidden_shape", np.array([1, tokens, HIDDEN], np.int64))
    scale = b.const("sqrt_head", np.float32(np.sqrt(HEAD)))
    for i in range(layers):
        p = f"encoder.layer.{i}"

        def heads(t: str, name: str, perm: list[int]) -> str:
            r = b.node("Reshape", [t, heads_shape], f"{p}/{name}/Reshape")  # noqa: B023
            return b.node("Transpose", [r], f"{p}/{name}/Transpose", perm=perm)  # noqa: B023

        q = heads(b.linear(x, HIDDEN, HIDDEN, f"{p}.attention.self.query"), "q", [0, 2, 1, 3])
        k = heads(b.linear(x, HIDDEN, HIDDEN, f"{p}.attention.self.key"), "k", [0, 2, 3, 1])
        v = heads(b.linear(x, HIDDEN, HIDDEN, f"{p}.attention.self.value"), "v", [0, 2, 1, 3])
        scores = b.node("Div", [b.node("MatMul", [q, k], f"{p}/scores/MatMul"), scale],
                        f"{p}/scores/Div")
        scores = b.node("Add", [scores, mask], f"{p}/scores/Add")
        probs = b.node("Softmax", [scores], f"{p}/Softmax", axis=-1)
        context = b.node("Transpose", [b.node("MatMul", [probs, v], f"{p}/context/MatMul")],
                         f"{p}/context/Transpose", perm=[0, 2, 1, 3])
        context = b.node("Reshape", [context, hidden_shape], f"{p}/context/Reshape")
        attention = b.linear(context, HIDDEN, HIDDEN, f"{p}.attention.output.dense")
        x = b.layer_norm(b.node("Add", [attention, x], f"{p}/attention/residual"),
                         f"{p}.attention.output.LayerNorm", HIDDEN)
        h = b.linear(x, HIDDEN, FFN, f"{p}.intermediate.dense")
        erf = b.node("Erf", [b.node("Div", [h, b.const(f"{p}.root2", np.float32(np.sqrt(2)))],
                                    f"{p}/gelu/Div")], f"{p}/gelu/Erf")
        h = b.node("Mul", [b.node("Mul", [h, b.node("Add", [erf, "one"], f"{p}/gelu/Add")],
                                  f"{p}/gelu/Mul"), b.const(f"{p}.half", np.float32(0.5))],
                   f"{p}/gelu/Mul_1")
        out = b.linear(h, FFN, HIDDEN, f"{p}.output.dense")
        x = b.layer_norm(b.node("Add", [out, x], f"{p}/output/residual"),
                         f"{p}.output.LayerNorm", HIDDEN)
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/output"))
    batch, tokens = ("batch_size", "sequence_length") if dynamic else (1, SEQ)
    graph = helper.make_graph(
        b.nodes, "tiny_bert",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, tokens]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, tokens])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       [batch, tokens, HIDDEN])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sparsec-samples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_bert_inputs(seed: int = 1, vocab: int = VOCAB, seq: int = SEQ,
                     padded: int = 28) -> dict[str, np.ndarray]:
    """Token ids and a mask with the last `padded` positions padded."""
    rng = np.random.default_rng(seed)
    mask = np.ones((1, seq), np.int64)
    mask[:, seq - padded:] = 0
    return {"input_ids": rng.integers(0, vocab, (1, seq)).astype(np.int64),
            "attention_mask": mask}
