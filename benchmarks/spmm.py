"""Sparse matrix kernels on transformer-sized layers, against dense onnxruntime and numpy.

    python benchmarks/spmm.py [--target native] [--quick] [--dtype int8]

For (M, K, N) in the shapes below (M = tokens), sparsity 70/80/90 %, weights pruned in 4x1
blocks, 1x16 blocks or unstructured: median latency of a compiled one-MatMul model (the
storage sparsec chooses itself), onnxruntime's dense MatMul on the same file, and numpy
(OpenBLAS; OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for this process). Reports ratios
measured in the same run and the fraction of one core's measured FMA peak (benchmarks/peak.c)
achieved on the nonzero FLOPs (1 thread), and sparsec's speedup on 2 threads (onnxruntime
keeps 1 thread: the ratios compare single cores).

With --dtype int8 the models are compiled with --quantize dynamic and compared with
onnxruntime's dense MatMulInteger (u8 activations with a zero point x s8 weights -> s32, the
activations quantized beforehand) and with onnxruntime running the whole dynamic quantization
(DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul, the same computation as sparsec's);
the accuracy column is the int8 result's largest error relative to the largest fp32 output.

With --dtype bf16 the models are compiled with --dtype bf16 (weights and activations rounded to
bf16, products summed in fp32) and compared with onnxruntime's fp32 MatMul and with sparsec's
own fp32 build of the same file; the accuracy column is as for int8.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.quantization
from common import median_seconds, ort_session, unset_openblas_overrides, write_table

unset_openblas_overrides()

import numpy as np
from kernels import pruned_weight
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.codegen import build, targets
from sparsec.compiler.passes.quantize import quantize_weight
from tests.quantization import run_exact

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (128, 1024, 4096),
          (128, 4096, 1024)]
SPARSITIES = (0.7, 0.8, 0.9)
PATTERNS = {"4x1": "4x1", "1x16": "1x16", "unstructured": "1x1"}


def matmul_model(w: np.ndarray, m: int):
    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "spmm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def peak_gflops(target: targets.Target, workdir: Path) -> tuple[float, float | None]:
    """One core's fp32 FMA peak with the target's vector flags, and its int8 VNNI peak (GOP/s)
    where the target has AVX-512 VNNI."""
    flags = [f for f in target.cflags if f in ("-mavx2", "-mfma", "-mavx512f", "-mavx512vnni")]
    if target.arch != "x86_64" or not flags:
        flags = ["-mavx2", "-mfma"]
    exe = workdir / "peak"
    subprocess.run([build.find_compiler(), "-O2", *flags, str(Path(__file__).parent / "peak.c"),
                    "-o", str(exe)], check=True)
    numbers = subprocess.run([str(exe)], check=True, capture_output=True,
                             text=True).stdout.split()
    return float(numbers[0]), float(numbers[1]) if len(numbers) > 1 else None


def matmul_integer_model(k: int, n: int, m: int):
    """onnxruntime's dense int8 product: u8 x (with zero point) times s8 weights -> int32."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])], "mmi",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.uint8(128), "zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dynamic_quantized_model(w: np.ndarray, m: int):
    """What sparsec --quantize dynamic computes, as ONNX operators for onnxruntime."""
    k, n = w.shape
    codes, scales = quantize_weight(w)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    graph = helper.make_graph(
        nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(codes, "wq"), numpy_helper.from_array(scales, "ws")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_rows(target, shapes, sparsities, peak_gops: float | None, tmp: Path) -> list[list]:
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        x_codes = rng.integers(0, 256, (m, k)).astype(np.uint8)
        integer = ort_session(matmul_integer_model(k, n, m).SerializeToString())
        integer_ms = 1e3 * median_seconds(lambda: integer.run(None, {"x": x_codes}))
        for sparsity in sparsities:
            for label, block in PATTERNS.items():
                w = pruned_weight(rng, k, n, 1 - sparsity, block)
                model = matmul_model(w, m)
                quantized = dynamic_quantized_model(w, m)
                dynamic = ort_session(quantized.SerializeToString())
                dynamic_ms = 1e3 * median_seconds(lambda: dynamic.run(None, {"x": x}))
                # every layer int8 (no float32 kept by the cost model): the int8 kernels are
                # what this table times, checked against the exact integer evaluation of the
                # graph onnxruntime runs (onnxruntime's own int8 saturates without VNNI)
                result = sparsec.compile_model(model, target.name,
                                               tmp / f"{m}-{k}-{n}-{label}-int8.so",
                                               quantize="dynamic", mixed_precision=False)
                with sparsec.load(result.library, threads=1) as module:
                    got = module.run({"x": x})["y"]
                    (expected,) = run_exact(quantized, {"x": x})
                    assert np.array_equal(got, expected), "differs from the exact int8 result"
                    ms = 1e3 * median_seconds(lambda: module.run({"x": x}))
                with sparsec.load(result.library, threads=2) as module:
                    ms2 = 1e3 * median_seconds(lambda: module.run({"x": x}))
                exact = x @ w
                error = np.max(np.abs(got - exact)) / np.max(np.abs(exact))
                gops = 2 * m * np.count_nonzero(w) / (ms * 1e6)
                layer = result.info["layers"][0]
                rows.append([f"{m}x{k}x{n}", f"{sparsity:.0%}", label, layer["pattern"],
                             f"{ms:.3f}", f"{integer_ms:.3f}", f"{dynamic_ms:.3f}",
                             f"{integer_ms / ms:.2f}x", f"{dynamic_ms / ms:.2f}x",
                             f"{gops:.0f}",
                             f"{gops / peak_gops:.0%}" if peak_gops else "-",
                             f"{ms2:.3f}", f"{ms / ms2:.2f}x", f"{error:.2e}"])
                print(rows[-1], flush=True)
    return rows


def bf16_rows(target, shapes, sparsities, tmp: Path) -> list[list]:
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        for sparsity in sparsities:
            for label, block in PATTERNS.items():
                w = pruned_weight(rng, k, n, 1 - sparsity, block)
                model = matmul_model(w, m)
                session = ort_session(model.SerializeToString())
                ort_ms = 1e3 * median_seconds(lambda: session.run(None, {"x": x}))
                times, outputs, layers = {}, {}, {}
                for dtype in ("float32", "bf16"):
                    result = sparsec.compile_model(
                        model, target.name, tmp / f"{m}-{k}-{n}-{label}-{dtype}.so",
                        quantize="bf16" if dtype == "bf16" else None)
                    with sparsec.load(result.library, threads=1) as module:
                        outputs[dtype] = module.run({"x": x})["y"]
                        times[dtype] = 1e3 * median_seconds(lambda: module.run({"x": x}))
                    layers[dtype] = result.info["layers"][0]
                exact = x @ w
                error = np.max(np.abs(outputs["bf16"] - exact)) / np.max(np.abs(exact))
                kernel = layers["bf16"].get("dispatch", {}).get("avx512bf16",
                                                                layers["bf16"]["kernel"])
                rows.append([f"{m}x{k}x{n}", f"{sparsity:.0%}", label, layers["bf16"]["pattern"],
                             kernel.split("__")[-1], f"{times['bf16']:.3f}",
                             f"{times['float32']:.3f}", f"{ort_ms:.3f}",
                             f"{ort_ms / times['bf16']:.2f}x",
                             f"{times['float32'] / times['bf16']:.2f}x", f"{error:.2e}"])
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="native")
    parser.add_argument("--quick", action="store_true", help="first shape and 90 %% only")
    parser.add_argument("--dtype", choices=["float32", "int8", "bf16"], default="float32",
                        help="int8: compile with --quantize dynamic, compare with MatMulInteger; "
                             "bf16: compile with --dtype bf16, compare with fp32")
    args = parser.parse_args()
    target = targets.resolve(args.target)
    shapes = SHAPES[:1] if args.quick else SHAPES
    sparsities = (0.9,) if args.quick else SPARSITIES
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        peak, peak_gops = peak_gflops(target, Path(tmp))
        print(f"peak: {peak:.0f} GFLOP/s per core, int8 {peak_gops or '-'} GOP/s")
        if args.dtype == "bf16":
            rows = bf16_rows(target, shapes, sparsities, Path(tmp))
            path = write_table(
                f"spmm-bf16-{target.name}", f"Sparse MatMul in bf16 (--dtype bf16), target "
                f"{target.name}",
                ["M x K x N", "sparsity", "pruned as", "sparsec storage", "kernel ISA",
                 "bf16 ms", "sparsec fp32 ms", "ORT fp32 ms", "bf16 vs ORT", "bf16 vs fp32",
                 "error vs fp32"], rows,
                "Medians, 1 thread. 'kernel ISA': what runs on this CPU (avx512bf16: "
                "VDPBF16PS; avx512f: the same products by FMA, where the CPU lacks "
                "AVX512_BF16). 'error vs fp32': max |bf16 - fp32 result| / max |fp32 "
                "result|, the accuracy bf16 costs.")
            print(f"wrote {path}")
            return
        if args.dtype == "int8":
            rows = int8_rows(target, shapes, sparsities, peak_gops, Path(tmp))
            path = write_table(
                f"spmm-int8-{target.name}",
                f"Sparse MatMul in int8 (--quantize dynamic), target {target.name}",
                ["M x K x N", "sparsity", "pruned as", "sparsec storage", "sparsec ms",
                 "ORT MatMulInteger ms", "ORT dynamic-quantized ms", "vs MatMulInteger",
                 "vs ORT dynamic", "nonzero GOP/s", "of int8 peak", "2 threads ms",
                 "2 vs 1 thread", "error vs fp32"], rows,
                f"Medians; int8 peak {peak_gops or '-'} GOP/s per core (benchmarks/peak.c, "
                "vpdpbusd); onnxruntime on 1 thread. sparsec includes quantizing the fp32 "
                "input and the fp32 output; MatMulInteger starts from u8 codes and returns "
                "int32. 'error vs fp32': max |int8 - fp32 result| / max |fp32 result|; "
                "sparsec's outputs equal onnxruntime's dynamic-quantized ones exactly "
                "(asserted).")
            print(f"wrote {path}")
            return
        for m, k, n in shapes:
            x = rng.standard_normal((m, k)).astype(np.float32)
            for sparsity in sparsities:
                for label, block in PATTERNS.items():
                    w = pruned_weight(rng, k, n, 1 - sparsity, block)
                    model = matmul_model(w, m)
                    session = ort_session(model.SerializeToString())
                    ort_ms = 1e3 * median_seconds(lambda: session.run(None, {"x": x}))
                    np_ms = 1e3 * median_seconds(lambda: x @ w)
                    result = sparsec.compile_model(model, target.name,
                                                   Path(tmp) / f"{m}-{k}-{n}-{label}.so")
                    with sparsec.load(result.library, threads=1) as module:
                        got = module.run({"x": x})["y"]
                        np.testing.assert_allclose(got, x @ w, rtol=1e-3, atol=1e-3)
                        ms = 1e3 * median_seconds(lambda: module.run({"x": x}))
                    with sparsec.load(result.library, threads=2) as module:
                        ms2 = 1e3 * median_seconds(lambda: module.run({"x": x}))
                    nonzero_gflops = 2 * m * np.count_nonzero(w) / (ms * 1e6)
                    layer = result.info["layers"][0]
                    rows.append([f"{m}x{k}x{n}", f"{sparsity:.0%}", label, layer["pattern"],
                                 f"{ms:.3f}", f"{ort_ms:.3f}", f"{np_ms:.3f}",
                                 f"{ort_ms / ms:.2f}x", f"{np_ms / ms:.2f}x",
                                 f"{nonzero_gflops:.0f}", f"{nonzero_gflops / peak:.0%}",
                                 f"{ms2:.3f}", f"{ms / ms2:.2f}x"])
                    print(rows[-1], flush=True)
    path = write_table(
        f"spmm-{target.name}", f"Sparse MatMul, target {target.name}",
        ["M x K x N", "sparsity", "pruned as", "sparsec storage", "sparsec ms", "ORT ms",
         "numpy ms", "vs ORT", "vs numpy", "nonzero GFLOP/s", "of peak", "2 threads ms",
         "2 vs 1 thread"], rows,
        f"Medians; peak {peak:.0f} GFLOP/s per core measured by benchmarks/peak.c; numpy on 1 "
        "thread with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset in its process; onnxruntime on "
        "1 thread.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
