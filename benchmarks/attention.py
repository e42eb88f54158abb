"""Fused attention against onnxruntime's unfused MatMul -> Softmax -> MatMul, 1 thread.

    python benchmarks/attention.py [--targets x86-avx2,x86-avx512] [--quick]

Each case is one encoder attention as exporters write it: Q and V split into heads by
Transposes, K transposed, scaled by 1/sqrt(head), a per-key mask added (the last 10 % of
keys masked), softmax, the context product and the Transpose back. sparsec fuses all of it
into one kernel after laying out K^T (checked: the model must compile to exactly those two
layers, both timed); onnxruntime
runs the graph as it is, with its graph optimisations on. Every target this host can run
natively is measured in the same run (on an AVX-512 host that includes x86-avx2). Writes
benchmarks/results/attention.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, ort_session, unset_openblas_overrides, write_table

unset_openblas_overrides()

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.codegen import targets

SHAPES = [(12, 128, 32), (12, 128, 64), (12, 512, 32), (12, 512, 64)]  # heads, seq, head


def attention_model(heads: int, seq: int, head: int):
    swap = [0, 2, 1, 3]
    nodes = [helper.make_node("Transpose", ["q"], ["qh"], perm=swap),
             helper.make_node("Transpose", ["v"], ["vh"], perm=swap),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["qh", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "vh"], ["context"]),
             helper.make_node("Transpose", ["context"], ["y"], perm=swap)]
    shape = [1, seq, heads, head]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
        + [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(1 / np.sqrt(head), np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="x86-avx2,x86-avx512,arm-neon",
                        help="comma-separated; those this host cannot run natively are left out")
    parser.add_argument("--quick", action="store_true", help="the first shape only")
    args = parser.parse_args()
    runnable = [name for name in args.targets.split(",")
                if targets.execution_mode(targets.resolve(name)) == "native"]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for heads, seq, head in SHAPES[:1] if args.quick else SHAPES:
            model = attention_model(heads, seq, head)
            feeds = {name: rng.standard_normal((1, seq, heads, head)).astype(np.float32)
                     for name in "qkv"}
            mask = np.zeros((1, 1, 1, seq), np.float32)
            mask[..., int(seq * 0.9):] = np.finfo(np.float32).min
            feeds["mask"] = mask
            session = ort_session(model.SerializeToString())
            ort_ms = median_seconds(lambda: session.run(None, feeds)) * 1e3
            expected = session.run(None, feeds)[0]
            row = [f"{heads}x{seq}x{head}", f"{ort_ms:.3f}"]
            for target in runnable:
                library = sparsec.compile(model, target=target,
                                          output=f"{tmp}/{target}-{seq}-{head}.so")
                module = sparsec.load(library, threads=1)
                ops = [layer["op"] for layer in module.info["layers"]]
                if ops != ["Transpose", "Attention"]:  # K^T is laid out, then one kernel
                    raise SystemExit(f"{target}: attention did not fuse: {ops}")
                error = np.abs(module.run(feeds)["y"] - expected).max()
                ms = median_seconds(lambda: module.run(feeds)) * 1e3
                row += [f"{ms:.3f}", f"{ort_ms / ms:.2f}x", f"{error:.1e}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    header = ["heads x seq x head", "ORT ms (unfused)"]
    for target in runnable:
        header += [f"{target} ms", "ratio", "max abs diff"]
    path = write_table("attention", "Fused attention against onnxruntime, 1 thread", header,
                       rows, "Medians; ratio = onnxruntime time / sparsec time, same run. "
                       "Batch 1, per-key mask with the last 10 % of keys masked. Command: "
                       "`python benchmarks/attention.py`.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
