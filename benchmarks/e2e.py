"""Whole models: sparsec against onnxruntime on the same model files, 1 and 2 threads.

    python benchmarks/e2e.py [MODEL.onnx ...] [--target native] [--quantize]

Default model: samples/tiny_bert.onnx. For each model: median latency of onnxruntime and of
sparsec (fp32, and int8 with --quantize dynamic when --quantize is given) on 1 and 2 threads,
the ratios measured in the same run, the largest absolute difference from onnxruntime's fp32
output, and the compile time. Inputs: float inputs standard normal; int64 inputs named like
an attention mask get ones (the last 10 % of positions zero), token type ids zeros, other
integer inputs token ids below 100; all seeded. Writes benchmarks/results/e2e-TARGET.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, ort_session, unset_openblas_overrides, write_table

unset_openblas_overrides()

import numpy as np
import onnx

import sparsec
from sparsec.codegen import targets

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    feeds = {}
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in value.name:
            mask = np.ones(shape, dtype)
            mask[..., int(shape[-1] * 0.9):] = 0
            feeds[value.name] = mask
        elif "token_type" in value.name:  # a single segment, as in sentence embedding
            feeds[value.name] = np.zeros(shape, dtype)
        else:
            feeds[value.name] = rng.integers(0, 100, shape).astype(dtype)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[str(ROOT / "samples" / "tiny_bert.onnx")])
    parser.add_argument("--target", default="native")
    parser.add_argument("--quantize", action="store_true", help="also int8 (dynamic)")
    args = parser.parse_args()
    target = targets.resolve(args.target)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.models:
            model = onnx.load(path)
            feeds = make_inputs(model, np.random.default_rng(0))
            ort_ms, reference = {}, None
            for threads in (1, 2):
                session = ort_session(model.SerializeToString(), threads)
                reference = session.run(None, feeds)[0]
                ort_ms[threads] = 1e3 * median_seconds(lambda: session.run(None, feeds))
            for quantize in (None, "dynamic") if args.quantize else (None,):
                start = time.perf_counter()
                result = sparsec.compile_model(path, target.name,
                                               Path(tmp) / f"{Path(path).stem}-{quantize}.so",
                                               quantize=quantize, use_cache=False)
                compile_s = time.perf_counter() - start
                times = {}
                for threads in (1, 2):
                    with sparsec.load(result.library, threads=threads) as module:
                        output = list(module.run(feeds).values())[0]
                        times[threads] = 1e3 * median_seconds(lambda: module.run(feeds))
                rows.append([Path(path).name, "int8" if quantize else "fp32",
                             f"{ort_ms[1]:.3f}", f"{times[1]:.3f}",
                             f"{ort_ms[1] / times[1]:.2f}x", f"{ort_ms[2]:.3f}",
                             f"{times[2]:.3f}", f"{ort_ms[2] / times[2]:.2f}x",
                             f"{np.max(np.abs(output - reference)):.2e}", f"{compile_s:.1f}"])
                print(rows[-1], flush=True)
    path = write_table(
        f"e2e-{target.name}", f"Whole models, target {target.name}",
        ["model", "sparsec dtype", "ORT ms (1 thread)", "sparsec ms (1 thread)", "ratio",
         "ORT ms (2 threads)", "sparsec ms (2 threads)", "ratio", "max abs diff vs ORT fp32",
         "compile s"], rows,
        "Medians; ratio = onnxruntime time / sparsec time, same run, same model file.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
