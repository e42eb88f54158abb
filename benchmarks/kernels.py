"""One Dense layer (M x K times K x N, bias, ReLU) at several densities and block patterns.

    python benchmarks/kernels.py [--target generic] [--m 128] [--k 768] [--n 768]
    python benchmarks/kernels.py --calibrate [--target T] [--quantize dynamic|bf16]
        [--hide FEATURE]
        # the kernel table's cost_ns (fp32 rows, or the int8 or bf16 rows with --quantize;
        # --hide avx512bf16 times the rows a library runs where the CPU lacks that feature)

For each density: onnxruntime and numpy on the same pruned weight (dense kernels, they cannot
skip zeros), and sparsec with every storage (dense and each block pattern, forced with
`force_pattern`) plus what the cost model chooses by itself. Ratios are onnxruntime time /
sparsec time, measured in the same run. The per-block overhead in codegen/kernels.py and the
cost constants in sparsec/api.py are read off this table.
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
from sparsec.compiler.ir import SPARSE_PATTERNS
from sparsec.compiler.patterns import Pattern


def pruned_weight(rng, k: int, n: int, density: float, pattern: str) -> np.ndarray:
    rows, cols = Pattern(pattern).block
    w = rng.standard_normal((k, n)).astype(np.float32)
    keep = rng.random((-(-k // rows), -(-n // cols))) < density
    mask = np.repeat(np.repeat(keep, rows, 0), cols, 1)[:k, :n]
    return w * mask


def layer_model(w: np.ndarray, m: int):
    k, n = w.shape
    b = np.zeros(n, np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"])]
    graph = helper.make_graph(nodes, "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calibrate(args, tmp: str) -> None:
    """ns per activation row and unit of work: weight element (dense), nonzero block (sparse).

    Each pattern is timed on weights pruned in its own blocks (full blocks, so the count is
    exact) at several densities; the median per-block time goes into codegen/kernels.py."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.m, args.k)).astype(np.float32)

    def per_unit(w, pattern, units):
        out = Path(tmp) / f"calibrate-{pattern}-{units}.so"
        hide = (f"-DSPARSEC_HIDE_FEATURES={1 << targets.FEATURE_BITS[args.hide]}",
                ) if args.hide else ()
        result = sparsec.compile_model(layer_model(w, args.m), args.target, out,
                                       force_pattern=pattern, quantize=args.quantize,
                                       extra_cflags=hide)
        with sparsec.load(result.library, threads=1) as module:
            seconds = median_seconds(lambda: module.run({"x": x}))
        return 1e9 * seconds / (units * args.m)

    dense_w = rng.standard_normal((args.k, args.n)).astype(np.float32)
    costs = {"dense": per_unit(dense_w, "dense", dense_w.size)}
    weights = {"dynamic": "int8", "bf16": "bfloat16"}.get(args.quantize, "float32")
    for pattern in costs.sparse_costs(targets.resolve(args.target), weights):
        samples = []
        for density in (0.2, 0.1, 0.05):
            w = pruned_weight(rng, args.k, args.n, density, pattern)
            samples.append(per_unit(w, pattern, Pattern(pattern).count(w)[0]))
        costs[pattern] = float(np.median(samples))
    print(f"target {args.target}, {weights} weights, ns per activation row and unit:")
    for name, value in costs.items():
        print(f"  {name:>5}: {value:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="generic")
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--k", type=int, default=768)
    parser.add_argument("--n", type=int, default=768)
    parser.add_argument("--densities", default="0.5,0.3,0.1,0.05")
    parser.add_argument("--block", default="4x1", help="block shape the weights are pruned in")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the kernel table's cost_ns for --target and print them")
    parser.add_argument("--quantize", choices=["dynamic", "bf16"],
                        help="with --calibrate: the int8 rows (weights quantized) or bf16 rows")
    parser.add_argument("--hide", choices=sorted(targets.FEATURE_BITS),
                        help="with --calibrate: build as if the CPU lacked this feature")
    args = parser.parse_args()
    if args.calibrate:
        with tempfile.TemporaryDirectory() as tmp:
            calibrate(args, tmp)
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.m, args.k)).astype(np.float32)
    header = ["density", "ORT ms", "numpy ms", "auto choice", "auto ms", "auto vs ORT"]
    header += [f"{p} ms" for p in ("dense",) + SPARSE_PATTERNS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for density in (float(d) for d in args.densities.split(",")):
            w = pruned_weight(rng, args.k, args.n, density, args.block)
            model = layer_model(w, args.m)
            session = ort_session(model.SerializeToString())
            ort_ms = 1e3 * median_seconds(lambda: session.run(None, {"x": x}))
            np_ms = 1e3 * median_seconds(lambda: np.maximum(x @ w, 0))
            times = {}
            for pattern in (None, "dense") + SPARSE_PATTERNS:
                out = Path(tmp) / f"{pattern}-{density}.so"
                result = sparsec.compile_model(model, args.target, out, force_pattern=pattern)
                module = sparsec.load(result.library, threads=1)
                got = module.run({"x": x})["y"]
                assert np.allclose(got, np.maximum(x @ w, 0), rtol=1e-3, atol=1e-3)
                times[pattern] = (1e3 * median_seconds(lambda: module.run({"x": x})),
                                  result.info["layers"][0]["pattern"])
                module.close()
            auto_ms, auto_pattern = times[None]
            rows.append([f"{density:.0%}", f"{ort_ms:.3f}", f"{np_ms:.3f}", auto_pattern,
                         f"{auto_ms:.3f}", f"{ort_ms / auto_ms:.2f}x"]
                        + [f"{times[p][0]:.3f}" for p in ("dense",) + SPARSE_PATTERNS])
            print(rows[-1], flush=True)
    path = write_table(
        f"kernels-{args.target}-{args.block}",
        f"Dense layer {args.m}x{args.k} . {args.k}x{args.n}, "
        f"weights pruned in {args.block} blocks, target {args.target}", header, rows,
        "1 thread; medians; numpy on 1 thread with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset in "
        "its process."
        " Columns after 'auto vs ORT': sparsec with the storage forced.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
