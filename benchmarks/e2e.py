"""Whole models: sparsec against onnxruntime on the same model files, 1 and 2 threads.

    python benchmarks/e2e.py [MODEL.onnx ...] [--targets native,x86-avx2] [--threads 1,2]
        [--dtype fp32,int8,bf16] [--deepsparse] [--name e2e-TARGET]

Default model: samples/tiny_bert.onnx. For each model: median latency of onnxruntime (fp32)
and of sparsec in each --dtype (default fp32; int8 is --quantize dynamic, and --quantize
alone adds it; bf16 is --dtype bf16) on 1 and 2 threads,
the ratios measured in the same run, the largest absolute difference from onnxruntime's fp32
output, and the compile time and peak memory. Inputs: float inputs standard normal; int64
inputs named like an attention mask get ones (the last 10 % of positions zero), token type
ids zeros, other integer inputs token ids below 100; all seeded. Writes
benchmarks/results/e2e-TARGET.md for each target (default: native, and on an AVX-512 host
x86-avx2 as well), or NAME.md for a single target. --deepsparse adds DeepSparse 1.8
(benchmarks/deepsparse_peer.py) at the same thread counts.
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
from deepsparse_peer import Peer

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


def paired_rounds(*runs, rounds: int = 3) -> list[list[float]]:
    """Each run's median milliseconds (a callable, or a Peer timing itself) per round, the
    runs alternating within a round (this VM's speed drifts)."""
    times = [[] for _ in runs]
    for _ in range(rounds):
        for run, kept in zip(runs, times):
            kept.append(run.median_ms() if isinstance(run, Peer) else
                        1e3 * median_seconds(run))
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median of per-round ratios: two runs timed back to back share the machine's
    speed of the moment, which the ratio of two separate medians does not."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def default_targets() -> list[str]:
    """native, and on an AVX-512 host the x86-avx2 build too: it runs here natively, and most
    x86 machines users own are AVX2-only."""
    native = targets.resolve("native").name
    return [native, "x86-avx2"] if native in ("x86-avx512", "x86-amx") else [native]


PEAK_PROBE = """
import sys
from sparsec.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print(next(line for line in f if line.startswith("VmHWM")))
sys.exit(status)
"""


class CompileFailed(SystemExit):
    """`sparsec compile` refused or failed; the message holds its stderr. A SystemExit, so that
    a benchmark that needs every model compiled stops with it, and one that reports the
    refusal (benchmarks/cnn.py) can catch it."""


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
        raise CompileFailed(f"compiling {model} failed: {done.stderr.strip()}")
    peak_kb = int(done.stdout.strip().splitlines()[-1].split()[1])
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[str(ROOT / "samples" / "tiny_bert.onnx")])
    parser.add_argument("--targets", help="comma-separated (default: native, and x86-avx2 "
                        "where native is AVX-512); one table each")
    parser.add_argument("--target", help="one target (the same as --targets T)")
    parser.add_argument("--dtype", default="fp32",
                        help="comma-separated sparsec dtypes to time: fp32, int8, bf16")
    parser.add_argument("--quantize", action="store_true", help="also int8 (dynamic)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--deepsparse", action="store_true",
                        help="time DeepSparse 1.8 too (benchmarks/deepsparse_peer.py --install); "
                             "on x86-avx2 tables with NM_ARCH=avx2")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per model (default 3; more on a noisy host)")
    parser.add_argument("--name", help="results file stem (default e2e-TARGET); with several "
                        "targets, STEM-TARGET")
    args = parser.parse_args()
    names = (args.targets or args.target or ",".join(default_targets())).split(",")
    dtypes = list(dict.fromkeys(args.dtype.split(",") + (["int8"] if args.quantize else [])))
    unknown = set(dtypes) - {"fp32", "int8", "bf16"}
    if unknown:
        raise SystemExit(f"unknown --dtype {', '.join(sorted(unknown))}: choose fp32, int8, bf16")
    thread_counts = [int(t) for t in args.threads.split(",")]
    for name in names:
        target = targets.resolve(name)
        rows = table(target, args.models, dtypes, thread_counts, args.deepsparse, args.rounds)
        header = ["model", "sparsec dtype"]
        for threads in thread_counts:
            plural = "thread" if threads == 1 else "threads"
            header += [f"ORT ms ({threads} {plural})", f"sparsec ms ({threads} {plural})",
                       "ratio"]
            if args.deepsparse:
                header += [f"DeepSparse ms ({threads} {plural})", "ratio to DeepSparse"]
        header += ["max abs diff vs ORT fp32", "compile s", "compile peak MB"]
        isa_note = (" onnxruntime uses every instruction set the CPU has, so on this AVX-512 "
                    "host it runs AVX-512 against sparsec's x86-avx2 build."
                    if target.name == "x86-avx2" and targets.can_execute(
                        targets.TARGETS["x86-avx512"]) else "")
        peer = (" DeepSparse 1.8 (its own venv, NM_ARCH=avx2 on x86-avx2 tables) runs the same "
                "file in a child process, its rounds alternating with the others'; ratio to "
                "DeepSparse = DeepSparse time / sparsec time, a median of rounds likewise."
                if args.deepsparse else "")
        path = write_table(
            # with several targets --name is a stem: one file each, never the default ones
            (args.name if len(names) == 1 else f"{args.name}-{target.name}") if args.name
            else f"e2e-{target.name}",
            f"Whole models, target {target.name}", header, rows,
            "Medians; ratio = onnxruntime time / sparsec time, same run, same model file; they "
            f"are measured in alternation, {args.rounds} rounds each, and a ratio is the median "
            "of the rounds' own ratios, so a drift in the machine's speed hits both."
            + isa_note + peer + " Compile: `sparsec compile` in a child process, wall time "
            "and peak resident memory.")
        print(f"wrote {path}")


def table(target, models: list[str], dtypes: list[str], thread_counts: list[int],
          deepsparse: bool, rounds: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            model = onnx.load(path)
            feeds = make_inputs(model, np.random.default_rng(0))
            reference = ort_session(model.SerializeToString(), 1).run(None, feeds)[0]
            for dtype in dtypes:
                library = Path(tmp) / f"{Path(path).stem}-{dtype}.so"
                compile_s, peak_mb = compile_in_child(path, target.name, library, dtype)
                row = [Path(path).name, dtype]
                for threads in thread_counts:
                    ort_run = functools.partial(
                        ort_session(model.SerializeToString(), threads).run, None, feeds)
                    peer = Peer(path, feeds, cores=threads,
                                arch="avx2" if target.name == "x86-avx2" else None) \
                        if deepsparse else None
                    with sparsec.load(library, threads=threads) as module:
                        output = list(module.run(feeds).values())[0]
                        times = paired_rounds(ort_run, lambda: module.run(feeds),
                                              *([peer] if peer else []), rounds=rounds)
                    if peer:
                        peer.close()
                    del ort_run  # the session's spinning threads must not share the cores
                    ms = [statistics.median(kept) for kept in times]
                    row += [f"{ms[0]:.3f}", f"{ms[1]:.3f}",
                            f"{median_ratio(times[0], times[1]):.2f}x"]
                    if peer:
                        row += [f"{ms[2]:.3f}", f"{median_ratio(times[2], times[1]):.2f}x"]
                row += [f"{np.max(np.abs(output - reference)):.2e}", f"{compile_s:.1f}",
                        f"{peak_mb:.0f}"]
                rows.append(row)
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
