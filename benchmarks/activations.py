"""What a fused activation costs a Dense layer, per target: the layer with GELU (both forms),
Sigmoid or Tanh against the same layer without one, 1 thread.

    python benchmarks/activations.py [--targets x86-avx2,x86-avx512]

The layer is MiniLM's FFN up-projection, 128 tokens x 384 -> 1536 with a bias, its weight dense
and pruned to 90 % in 1x16 blocks (a sparse layer has ~10x fewer products to hide the
activation behind, so it is the harder case). Inputs are drawn so that the pre-activation
values look like an encoder's (standard deviation ~1). The layers with and without the
activation are timed in alternating rounds and the median round kept. Every target this host
runs natively is measured (on an AVX-512 host that includes x86-avx2). Writes
benchmarks/results/activations.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, unset_openblas_overrides, write_table

unset_openblas_overrides()

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.codegen import targets

ACTIVATIONS = {"GELU": ("Gelu", {}), "GELU (tanh)": ("Gelu", {"approximate": "tanh"}),
               "Sigmoid": ("Sigmoid", {}), "Tanh": ("Tanh", {})}
M, K, N = 128, 384, 1536


def dense_layer(weight: np.ndarray, bias: np.ndarray, activation: str | None):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["z" if activation else "y"])]
    if activation:
        op, attributes = ACTIVATIONS[activation]
        nodes.append(helper.make_node(op, ["z"], ["y"], **attributes))
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def weights(kind: str, rng) -> np.ndarray:
    keep = np.ones((K, N)) if kind == "dense" else np.kron(rng.random((K, N // 16)) < 0.1,
                                                           np.ones((1, 16)))
    # scaled so that outputs have unit variance for unit-variance inputs
    return (rng.standard_normal((K, N)) * keep / np.sqrt(keep.sum(axis=0).mean())
            ).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="x86-avx2,x86-avx512,arm-neon")
    args = parser.parse_args()
    runnable = [name for name in args.targets.split(",")
                if targets.execution_mode(targets.resolve(name)) == "native"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(N)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in runnable:
            for kind in ("dense", "1x16-90%"):
                w = weights(kind, rng)

                def load(activation, w=w, kind=kind, target=target):
                    name = f"{tmp}/{target}-{kind}-{activation or 'none'}.so"
                    return sparsec.load(sparsec.compile(dense_layer(w, bias, activation),
                                                        target=target, output=name), threads=1)

                plain = load(None)
                row = [target, kind]
                for activation in ACTIVATIONS:
                    with load(activation) as module:
                        base, timed = [], []
                        for _ in range(3):
                            base.append(median_seconds(lambda: plain.run({"x": x})))
                            timed.append(median_seconds(lambda: module.run({"x": x})))
                        ratio = statistics.median(timed) / statistics.median(base)
                        row.append(f"{1e3 * statistics.median(timed):.3f} ({ratio:.2f}x)")
                row.insert(2, f"{1e3 * statistics.median(base):.3f}")
                plain.close()
                rows.append(row)
                print(" | ".join(row), flush=True)
    path = write_table(
        "activations", "Fused activations: a Dense layer's time with each, against none",
        ["target", "weight", "no activation ms", *[f"{a} ms (x none)" for a in ACTIVATIONS]],
        rows, f"1 thread, {M}x{K} -> {N} with a bias; medians of alternating rounds. The "
        "activations run on whole vectors (runtime_c/sparsec_vmath.h). Command: "
        "`python benchmarks/activations.py`.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
