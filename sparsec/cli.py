"""The `sparsec` command: compile, run, info, targets, verify, calibrate, cache, analyze
(benchmark in cli_benchmark).

User errors print `sparsec: error: <message>` and exit 1; no traceback for anything a user can
cause (bad file, unsupported operator, bad shape, failed build).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparsec.cli_benchmark import DEFAULT_SECONDS, cmd_benchmark
from sparsec.cli_options import (
    add_build_options,
    add_input_options,
    build_options,
    compile_printing_warnings,
)
from sparsec.errors import SparsecError
from sparsec.library_info import read_info
from sparsec.reports import describe_tensors, format_layers, format_profile
from sparsec.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsec", description="Ahead-of-time compiler for sparse neural networks.")
    parser.add_argument("--version", action="version", version=f"sparsec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model into a shared library")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output",
                   help="library to write (default: build/MODEL_STEM.so, build/MODEL_STEM.a "
                        "with --emit static); its header and sparsec.h go beside it")
    add_build_options(p)
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--report", action="store_true",
                   help="print per-layer sparsity, chosen kernel and why")
    p.add_argument("--profile", action="store_true",
                   help="time every layer at run time (see `sparsec run --profile`)")
    p.add_argument("--keep-source", metavar="DIR",
                   help="also write model.c (and a large model's unit-N.c) and weights.bin")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="print each compile phase (import, every pass, emit, C build) and "
                           "its time on stderr, also where stderr is not a terminal")
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print nothing but warnings and errors (no progress line on a "
                           "terminal, no `wrote ...`)")

    p = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p.add_argument("library")
    add_input_options(p)
    p.add_argument("--out", metavar="FILE.npz", help="save outputs instead of printing them")
    p.add_argument("--threads", type=int,
                   help="threads to run with (default: one per physical core)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run N times and print the median and mean time")
    p.add_argument("--profile", action="store_true",
                   help="print the time per layer and per operator (needs a library compiled "
                        "with --profile)")

    p = sub.add_parser("benchmark", help="time a model (.onnx, compiled first) or a library: "
                       "latency percentiles and items/s, optionally beside onnxruntime")
    p.add_argument("model", help="the .onnx file (compiled with the options below) or a .so")
    add_build_options(p)
    add_input_options(p)
    p.add_argument("--threads", type=int,
                   help="threads per run (default: the physical cores, shared among streams)")
    p.add_argument("--streams", type=int, default=1, metavar="N",
                   help="N concurrent runs, each on its own run context, for throughput "
                        "(default 1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time", type=float, metavar="S",
                        help=f"time for S seconds (default {DEFAULT_SECONDS:g})")
    budget.add_argument("--repeat", type=int, metavar="N", help="time N runs per stream")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S",
                   help="seconds of untimed runs first (at least one run; default 1)")
    p.add_argument("--compare", choices=["onnxruntime"],
                   help="also time onnxruntime on the same inputs (.onnx only), alternating "
                        "rounds, and report the latency ratio and the outputs' difference")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("info", help="describe a compiled library")
    p.add_argument("library")
    p.add_argument("--json", action="store_true", help="print the raw model info JSON")

    p = sub.add_parser("verify", help="compile for a target, run it (under qemu-user when the "
                       "host is another architecture) and compare with onnxruntime")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--target", default="native")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD...")
    add_input_options(p)
    p.add_argument("--quantize", choices=["dynamic"], help="the same as --dtype int8")
    p.add_argument("--dtype", choices=["float32", "int8", "bf16"], default="float32",
                   help="as for compile; int8 and bf16 are compared with float32 onnxruntime "
                        "within a share of each output's range (int8 2 %%, bf16 1 %%) unless "
                        "--rtol or --atol is given")
    p.add_argument("--rtol", type=float,
                   help="relative tolerance (default 1e-4: float32 sums in another order)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default 1e-5)")
    p.add_argument("--cpu", help="CPU model qemu emulates, e.g. cortex-a53 (emulated targets)")
    p.add_argument("--max-memory", metavar="SIZE", help="as for compile (default: 4G)")
    p.add_argument("--cache-dir", help="build cache folder (default: ~/.cache/sparsec)")

    sub.add_parser("targets", help="list targets and whether this host can run them")

    p = sub.add_parser("calibrate", help="time this host's kernels and save them as the costs "
                                         "compile chooses kernels by here")
    p.add_argument("--target", default="native",
                   help="a target this host runs natively (default: native)")
    p.add_argument("--quick", action="store_true",
                   help="small layers and short timings (seconds, rougher numbers)")

    p = sub.add_parser("cache", help="the build cache: what it holds (info) or empty it (clear)")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--cache-dir", help="build cache folder (default: ~/.cache/sparsec)")
    p.add_argument("--json", action="store_true", help="info as JSON")

    p = sub.add_parser("analyze", help="an HTML report of a model's sparsity, the kernels the "
                       "compiler chose and why, and their predicted (--measure: measured) time")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", metavar="REPORT.html",
                   help="the report to write (default: MODEL_STEM-analysis.html; with --json, "
                        "only when given)")
    add_build_options(p)
    p.add_argument("--json", action="store_true",
                   help="print the report's data (no pictures) as JSON on stdout")
    p.add_argument("--measure", action="store_true",
                   help="also compile with every weight dense and time both builds, whole runs "
                        "and every layer (the target must run on this host)")
    p.add_argument("--time", type=float, default=2.0, metavar="S",
                   help="with --measure: seconds of timed runs per build (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="with --measure: threads per run (default 1, as the cost model's "
                        "kernel costs are)")
    add_input_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SparsecError as exc:
        print(f"sparsec: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:  # compile's own are refusals already; run, benchmark, verify too
        print("sparsec: error: out of memory; the process's memory limit (ulimit -v) or the "
              "machine's memory is below what this needs", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`sparsec info x.so | head`): not an error of sparsec's. Python
        # flushes stdout again at exit, so it goes to /dev/null first; 141 is the status of a
        # tool that SIGPIPE ended, as the shell reports it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # unwritable output folder, full disk, ...
        print(f"sparsec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsec: interrupted", file=sys.stderr)
        return 130


def cmd_compile(args) -> int:
    from sparsec.progress import for_terminal

    result = compile_printing_warnings(args.model, args.target, args.output, dump_ir=args.dump_ir,
                      keep_source=args.keep_source, profile=args.profile,
                      progress=for_terminal(args.verbose, args.quiet), **build_options(args))
    if args.report:
        if "buckets" in result.info:
            print(f"layers of the longest bucket, {result.info['buckets']['lengths'][-1]} "
                  "(each bucket's are in `sparsec info --json`, \"plans\"):")
        print(format_layers(result.info))
        print(f"kernel costs: {'measured on this host, ' + str(result.host_profile)}"
              if result.host_profile else "kernel costs: the kernel table's "
              "(`sparsec calibrate` measures this host's)")
    if args.quiet:
        return 0
    emulated = f"; {result.info['emulated']}" if "emulated" in result.info else ""
    buckets = result.info.get("buckets")
    plans = (f", {len(buckets['lengths'])} plans for lengths "
             f"{', '.join(map(str, buckets['lengths']))}" if buckets else "")
    # sparsec.h, the ABI header X.h includes, is named too: it lands beside the library
    cached = ", from the build cache" if result.cached else ""
    print(f"wrote {result.library} (target {result.info['target']}{emulated}{plans}{cached}), "
          f"{result.header} and {result.header.parent / 'sparsec.h'}")
    return 0


def cmd_run(args) -> int:
    from sparsec import inputs
    from sparsec.benchmark import latency_stats
    from sparsec.module import load

    if args.repeat < 1:
        raise SparsecError(f"--repeat must be at least 1, got {args.repeat}")
    with load(args.library, threads=args.threads) as module:
        feeds = inputs.model_inputs(module.info["inputs"], args.input, args.seed, log=print,
                                    buckets=module.info.get("buckets"))
        seconds = []
        for _ in range(args.repeat):
            begin = time.perf_counter()
            outputs = module.run(feeds)
            seconds.append(time.perf_counter() - begin)
        if args.repeat > 1:
            stats = latency_stats(seconds)
            print(f"{args.repeat} runs on {module.threads} thread(s): median "
                  f"{stats['p50']:.3f} ms, mean {stats['mean']:.3f} ms (no warm-up: "
                  "`sparsec benchmark` for more)")
        if args.profile:
            print(format_profile(module.profile(), args.repeat))
    if args.out:
        np.savez(args.out, **outputs)
        print(f"wrote {', '.join(outputs)} to {args.out}")
        return 0
    for name, value in outputs.items():
        print(f"{name}: {value.dtype.name}{list(value.shape)}")
        print(np.array2string(value, threshold=200, precision=6))
    return 0


def cmd_info(args) -> int:
    info = read_info(Path(args.library))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.library}: sparsec {info['sparsec_version']}, target {info['target']}"
          + (f" (needs {', '.join(info['features'])})" if info["features"] else ""))
    if "emulated" in info:
        print(f"EMULATED: {info['emulated']}")
    if "name" in info:
        print(f"name: {info['name']} (its API is {info['name']}_create, {info['name']}_run, "
              "...; compiled with --name)")
    print(f"arena: {info['arena_bytes']} bytes")
    if "buckets" in info:
        bucketed = ", ".join(f"{name!r} axis {axes[0]}"
                             for name, axes in info["buckets"]["inputs"].items())
        print(f"buckets: lengths {', '.join(map(str, info['buckets']['lengths']))} along "
              f"{bucketed}; the shapes below are the longest's")
    print("inputs:\n" + describe_tensors(info["inputs"]))
    print("outputs:\n" + describe_tensors(info["outputs"]))
    print("layers:\n" + format_layers(info))
    return 0


def cmd_calibrate(args) -> int:
    from sparsec.calibrate import calibrate
    from sparsec.codegen import costs, targets

    target = targets.resolve(args.target)
    print(f"timing {target.name}'s kernels on 1 thread, ns per activation row and weight "
          "element (dense) or nonzero block:", flush=True)
    path, measured = calibrate(target.name, quick=args.quick,
                               progress=lambda line: print(f"  {line}", flush=True))
    changed = []
    for dtype in sorted({d for d, _ in measured}):
        table = costs.cost_model(target, dtype)
        for (d, pattern), ns in sorted(measured.items()):
            if d != dtype:
                continue
            before = table.dense_per_element if pattern == "dense" else \
                table.per_block.get(pattern)
            if before:
                changed.append(f"  {dtype:>8} {pattern:>6}: {ns / before:.2f}x the table's")
    print("against the kernel table:", *changed, sep="\n")
    print(f"wrote {path}: compile uses it for {target.name} on this CPU "
          "(--no-host-profile: the table's costs)")
    return 0


def cmd_targets(args) -> int:
    from sparsec.codegen import build, targets

    try:
        compiler = build.compiler_identity(build.find_compiler()).splitlines()[1]
    except (SparsecError, IndexError):
        compiler = "none found (install gcc or clang)"
    native = targets.resolve("native").name
    print(f"host: {targets.host_arch()}; C compiler: {compiler}")
    for target in targets.TARGETS.values():
        emulated = ("runs here emulated (--emulate)" if targets.runs_emulated(target)
                    else f"runs here under {target.emulator}")
        how = {"native": "runs here", "emulated": emulated,
               "compile-only": "compile-only here",
               "unavailable": f"needs {target.cross_triplet}-gcc (apt-get install "
                              f"gcc-{target.cross_triplet})"}[targets.execution_mode(target)]
        missing = [f for f in target.features if f not in targets.host_features()]
        if missing and target.arch in ("any", targets.host_arch()):
            how += f" (CPU lacks {', '.join(missing)})"
        mark = "  <- native" if target.name == native else ""
        print(f"  {target.name:<17} {how:<44} {target.description}{mark}")
    return 0


def cmd_verify(args) -> int:
    """Exit 0 when every output is within tolerance of onnxruntime's, 1 otherwise."""
    import onnx
    import onnxruntime as ort

    from sparsec import emulation, inputs
    from sparsec.codegen import targets
    from sparsec.compiler.frontend import parse_input_shapes
    from sparsec.compiler.options import DTYPES

    target = targets.resolve(args.target)
    quantize = args.quantize or DTYPES[args.dtype]
    by_range = quantize is not None and args.rtol is None and args.atol is None
    rtol = 1e-4 if args.rtol is None else args.rtol
    atol = 1e-5 if args.atol is None else args.atol
    with tempfile.TemporaryDirectory(prefix="sparsec-verify-") as tmp:
        result = compile_printing_warnings(args.model, target.name, Path(tmp) / "model.so",
                               input_shapes=parse_input_shapes(args.input_shape),
                               quantize=quantize, cache_dir=args.cache_dir,
                               max_memory=args.max_memory,
                               emulate=targets.runs_emulated(target))
        feeds = inputs.model_inputs(result.info["inputs"], args.input, args.seed)
        mode = targets.execution_mode(target)
        outputs = emulation.run(result.library, target, result.info, feeds, cpu=args.cpu,
                                cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    model = onnx.load(args.model)  # onnxruntime takes the inputs' shapes as they come
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    print(f"{args.model}: target {target.name}, run {mode}"
          + (f" ({target.emulation.what})" if targets.runs_emulated(target) else
             f" ({target.emulator}{' -cpu ' + args.cpu if args.cpu else ''})"
             if mode == "emulated" else ""))
    failed = False
    for name, got in outputs.items():
        wanted = expected[name]
        diff = np.max(np.abs(got.astype(np.float64) - wanted)) if got.size else 0.0
        if by_range:
            share = RANGE_SHARE[quantize]
            bound = share * (np.max(np.abs(wanted)) if wanted.size else 0.0)
            close = bool(np.array_equal(np.isnan(got), np.isnan(wanted))
                         and np.nan_to_num(diff) <= bound)
            how = f"{'int8' if quantize == 'dynamic' else quantize}: within {share:.0%} of " \
                  f"the output's range, {bound:.3g}"
        else:
            close = np.allclose(got, wanted, rtol=rtol, atol=atol, equal_nan=True)
            how = f"rtol {rtol:g}, atol {atol:g}"
        failed |= not close
        print(f"  {name}: max abs diff {diff:.3g} -> {'ok' if close else 'MISMATCH'} ({how})")
    return 1 if failed else 0


# The share of an output's largest magnitude that a lowered build may differ from float32
# onnxruntime by: int8 quantizes every layer's activations to 255 steps and its weights to
# 254, bf16 rounds both to 8 significant bits; LayerNorm re-centres after each block, so the
# error stays at a few steps (tiny BERT: int8 0.4 %, bf16 0.07 %; tests/models/test_tiny_bert.py
# holds the same bounds).
RANGE_SHARE = {"dynamic": 0.02, "bf16": 0.01}


def cmd_cache(args) -> int:
    from sparsec import compile_cache
    from sparsec.codegen.build import default_cache_dir

    folder = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "clear":
        print(f"removed {compile_cache.clear(folder)} entries from {folder}")
        return 0
    usage = compile_cache.usage(folder)
    if args.json:
        print(json.dumps(usage, indent=1))
        return 0
    print(f"{folder}: {usage['bytes'] / 2**20:.1f} MiB of at most "
          f"{usage['limit_bytes'] / 2**20:.0f} MiB (SPARSEC_CACHE_SIZE; least recently used "
          "entries go first)")
    for kind, counts in usage["kinds"].items():
        print(f"  {counts['entries']:>6} {kind}: {counts['bytes'] / 2**20:.1f} MiB")
    return 0


def cmd_analyze(args) -> int:
    from sparsec.analyze import Measure, analyze

    if args.emit != "shared":
        raise SparsecError("analyze reads and runs a shared library; drop --emit static")
    if not args.measure and (args.input or args.threads != 1 or args.time != 2.0):
        raise SparsecError("--input, --threads and --time are for --measure")
    if args.threads < 1:
        raise SparsecError(f"--threads must be at least 1, got {args.threads}")
    if not args.time > 0:
        raise SparsecError(f"--time must be a positive number of seconds, got {args.time}")
    measure = Measure(seconds=args.time, threads=args.threads, inputs=tuple(args.input),
                      seed=args.seed) if args.measure else None
    # a large model takes a minute (BERT-base: compile 20 s, charts 35 s): say what is going on
    say = (lambda message: print(f"sparsec analyze: {message}", file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    with tempfile.TemporaryDirectory(prefix="sparsec-analyze-") as tmp:
        analysis = analyze(args.model, args.target, workdir=Path(tmp), measure=measure,
                           compile_fn=compile_printing_warnings, progress=say,
                           **build_options(args))
    if args.json:
        print(json.dumps(analysis.data, indent=1))
    if args.json and not args.output:
        return 0
    from sparsec.analyze_html import render

    output = Path(args.output or Path(args.model).stem + "-analysis.html")
    if say:
        say(f"drawing the charts of {len(analysis.data['matrix_layers'])} matrix layers")
    output.write_text(render(analysis), encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr if args.json else sys.stdout)
    return 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "benchmark": cmd_benchmark,
            "info": cmd_info, "verify": cmd_verify, "targets": cmd_targets,
            "calibrate": cmd_calibrate, "cache": cmd_cache, "analyze": cmd_analyze}


if __name__ == "__main__":
    sys.exit(main())
