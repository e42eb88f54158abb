"""Whole models: sparsec against onnxruntime on the same model files, 1 and 2 threads.

    python benchmarks/e2e.py [MODEL.onnx ...] [--target native] [--dtype fp32,int8,bf16]
        [--name e2e-TARGET]

Default model: samples/tiny_bert.onnx. For each model: median latency of onnxruntime (fp32)
and of sparsec in each --dtype (default fp32; int8 is --quantize dynamic, and --quantize
alone adds it; bf16 is --dtype bf16) on 1 and 2 threads,
the ratios measured in the same run, the largest absolute difference from onnxruntime's fp32
output, and the compile time and peak memory. Inputs: float inputs standard normal; int64
inputs named like an attention mask get ones (the last 10 % of positions zero), token type
ids zeros, other integer inputs token ids below 100; all seeded. Writes
benchmarks/results/NAME.md (default e2e-TARGET.md).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
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


def paired_medians(ort_run, sparsec_run, rounds: int = 3) -> tuple[float, float]:
    """Median milliseconds of each, measured in alternating rounds (this VM's speed drifts)."""
    ort, ours = [], []
    for _ in range(rounds):
        ort.append(1e3 * median_seconds(ort_run))
        ours.append(1e3 * median_seconds(sparsec_run))
    return statistics.median(ort), statistics.median(ours)


PEAK_PROBE = """
import sys
from sparsec.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print(next(line for line in f if line.startswith("VmHWM")))
sys.exit(status)
"""


def compile_in_child(model: str, target: str, library: Path,
                     dtype: str) -> tuple[float, float]:
    """`sparsec compile` in a child process: wall seconds and peak resident megabytes (the
    child's own VmHWM, which exec resets; rusage would count this big parent's pages)."""
    command = [sys.executable, "-c", PEAK_PROBE, "compile", model, "--target", target,
               "-o", str(library), "--no-cache", "--dtype", "float32" if dtype == "fp32" else dtype]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"compiling {model} failed: {done.stderr.strip()}")
    peak_kb = int(done.stdout.strip().splitlines()[-1].split()[1])
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[str(ROOT / "samples" / "tiny_bert.onnx")])
    parser.add_argument("--target", default="native")
    parser.add_argument("--dtype", default="fp32",
                        help="comma-separated sparsec dtypes to time: fp32, int8, bf16")
    parser.add_argument("--quantize", action="store_true", help="also int8 (dynamic)")
    parser.add_argument("--name", help="results file stem (default e2e-TARGET)")
    args = parser.parse_args()
    target = targets.resolve(args.target)
    dtypes = list(dict.fromkeys(args.dtype.split(",") + (["int8"] if args.quantize else [])))
    unknown = set(dtypes) - {"fp32", "int8", "bf16"}
    if unknown:
        raise SystemExit(f"unknown --dtype {', '.join(sorted(unknown))}: choose fp32, int8, bf16")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.models:
            model = onnx.load(path)
            feeds = make_inputs(model, np.random.default_rng(0))
            reference = ort_session(model.SerializeToString(), 1).run(None, feeds)[0]
            for dtype in dtypes:
                library = Path(tmp) / f"{Path(path).stem}-{dtype}.so"
                compile_s, peak_mb = compile_in_child(path, target.name, library, dtype)
                ms = {}
                for threads in (1, 2):
                    ort_run = functools.partial(
                        ort_session(model.SerializeToString(), threads).run, None, feeds)
                    with sparsec.load(library, threads=threads) as module:
                        output = list(module.run(feeds).values())[0]
                        ms[threads] = paired_medians(ort_run, lambda: module.run(feeds))
                    del ort_run  # the session's spinning threads must not share the cores
                rows.append([Path(path).name, dtype,
                             *[f"{v:.3f}" if i < 2 else v for threads in (1, 2)
                               for i, v in enumerate(
                                   (*ms[threads], f"{ms[threads][0] / ms[threads][1]:.2f}x"))],
                             f"{np.max(np.abs(output - reference)):.2e}", f"{compile_s:.1f}",
                             f"{peak_mb:.0f}"])
                print(rows[-1], flush=True)
    path = write_table(
        args.name or f"e2e-{target.name}", f"Whole models, target {target.name}",
        ["model", "sparsec dtype", "ORT ms (1 thread)", "sparsec ms (1 thread)", "ratio",
         "ORT ms (2 threads)", "sparsec ms (2 threads)", "ratio", "max abs diff vs ORT fp32",
         "compile s", "compile peak MB"], rows,
        "Medians; ratio = onnxruntime time / sparsec time, same run, same model file; the two "
        "are measured in alternation, three rounds each, and the median round kept, so a "
        "drift in the machine's speed hits both. Compile: `sparsec compile` in a child "
        "process, wall time and peak resident memory.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
