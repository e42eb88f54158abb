"""Make the sample models in this folder, deterministically (seeded).

    python samples/make_samples.py

mlp_sparse.onnx: a 3-layer MLP (64 -> 256 -> 256 -> 10, batch 4) with ReLU, its weights
magnitude-pruned to 90 % in 1x16 blocks, 4x1 blocks and unstructured respectively, so one small
model exercises dense-vs-sparse selection and several block patterns.

tiny_bert.onnx (+ tiny_bert_input_ids.npy, tiny_bert_attention_mask.npy): a 2-layer,
hidden-64 BERT encoder in the form Hugging Face exports take, its Linears pruned to 90 % in
4x1 blocks (see tiny_bert.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tiny_bert import tiny_bert, tiny_bert_inputs

HERE = Path(__file__).resolve().parent
OPSET = 17


def prune_blocks(weight: np.ndarray, rows: int, cols: int, sparsity: float) -> np.ndarray:
    """Zero the weakest rows x cols blocks (by L1 norm) of a K x N weight."""
    k, n = weight.shape
    blocks = np.abs(weight).reshape(k // rows, rows, n // cols, cols).sum(axis=(1, 3))
    threshold = np.quantile(blocks, sparsity)
    keep = np.repeat(np.repeat(blocks > threshold, rows, axis=0), cols, axis=1)
    return (weight * keep).astype(np.float32)


def mlp_sparse(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    sizes = [64, 256, 256, 10]
    patterns = [(1, 16), (4, 1), (1, 1)]
    nodes, inits = [], []
    current = "x"
    for layer, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        rows, cols = patterns[layer]
        cols = cols if n % cols == 0 else 1
        weight = prune_blocks(rng.standard_normal((k, n)).astype(np.float32) / np.sqrt(k),
                              rows, cols, 0.9)
        bias = (0.1 * rng.standard_normal(n)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"fc{layer}.weight"),
                  numpy_helper.from_array(bias, f"fc{layer}.bias")]
        nodes.append(helper.make_node("MatMul", [current, f"fc{layer}.weight"],
                                      [f"fc{layer}.mm"], name=f"fc{layer}/MatMul"))
        out = "y" if layer == len(sizes) - 2 else f"fc{layer}.out"
        add_out = f"fc{layer}.pre" if out != "y" else out
        nodes.append(helper.make_node("Add", [f"fc{layer}.mm", f"fc{layer}.bias"], [add_out],
                                      name=f"fc{layer}/Add"))
        if out != "y":
            nodes.append(helper.make_node("Relu", [add_out], [out], name=f"fc{layer}/Relu"))
        current = out
    graph = helper.make_graph(
        nodes, "mlp_sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sparsec-samples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    onnx.save(mlp_sparse(), str(HERE / "mlp_sparse.onnx"))
    np.save(HERE / "mlp_input.npy",
            np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32))
    print(f"wrote {HERE / 'mlp_sparse.onnx'} and {HERE / 'mlp_input.npy'}")
    onnx.save(tiny_bert(), str(HERE / "tiny_bert.onnx"))
    for name, value in tiny_bert_inputs().items():
        np.save(HERE / f"tiny_bert_{name}.npy", value)
    print(f"wrote {HERE / 'tiny_bert.onnx'} and its inputs tiny_bert_*.npy")


if __name__ == "__main__":
    main()
