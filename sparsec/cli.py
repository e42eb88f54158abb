"""The `sparsec` command: compile, run, info, targets.

User errors print `sparsec: error: <message>` and exit 1; no traceback for anything a user can
cause (bad file, unsupported operator, bad shape, failed build).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from sparsec import benchmark
from sparsec.errors import PortableKernelWarning, SparsecError
from sparsec.version import __version__

DEFAULT_SECONDS = 5.0
PROGRESS_AFTER_SECONDS = 2.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsec", description="Ahead-of-time compiler for sparse neural networks.")
    parser.add_argument("--version", action="version", version=f"sparsec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model into a shared library")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", help="library to write (default: MODEL_STEM.so)")
    _add_build_options(p)
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--report", action="store_true",
                   help="print per-layer sparsity, chosen kernel and why")
    p.add_argument("--profile", action="store_true",
                   help="time every layer at run time (see `sparsec run --profile`)")
    p.add_argument("--keep-source", metavar="DIR",
                   help="also write model.c (and a large model's unit-N.c) and weights.bin")

    p = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p.add_argument("library")
    _add_input_options(p)
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
    _add_build_options(p)
    _add_input_options(p)
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
    _add_input_options(p)
    p.add_argument("--quantize", choices=["dynamic"])
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="relative tolerance (default 1e-4: float32 sums in another order)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
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
    return parser


def _add_build_options(p: argparse.ArgumentParser) -> None:
    """How to build a library from an ONNX model: the options `compile` and `benchmark` share
    (read back by _build_options)."""
    p.add_argument("--target", default="native",
                   help="target to compile for (default: native; see `sparsec targets`)")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD...",
                   help="pin a dynamic input shape, e.g. input_ids=1x128 (repeatable)")
    p.add_argument("--pattern", metavar="P", dest="force_pattern",
                   help="store every weight as P (dense, 1x1, 4x1, 1x4, 1x16, 16x1, 4x4; "
                        "x86-amx int8 and bf16 also 4x16, 2x16, bitmask) instead of the "
                        "cost model's choice")
    p.add_argument("--quantize", choices=["dynamic"],
                   help="dynamic: int8 matrix products (weights per output channel at compile "
                        "time, activations per tensor at run time, as onnxruntime's "
                        "DynamicQuantizeLinear)")
    p.add_argument("--dtype", choices=["float32", "int8", "bf16"], default="float32",
                   help="int8 is --quantize dynamic; bf16 multiplies weights and activations "
                        "rounded to bf16, summing in fp32 (default: float32, the model's own)")
    p.add_argument("--no-reorder", action="store_true",
                   help="keep every weight's channel order (no block reordering)")
    p.add_argument("--emulate", action="store_true",
                   help="x86-amx: emulate the AMX tile instructions in scalar C, to test on a "
                        "CPU without AMX (slow; the library's info says so)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="most memory any tensor, and weights plus arena together, may take, "
                        "e.g. 16G (default: 4G); larger models are refused before allocating")
    p.add_argument("--no-cache", action="store_true", help="rebuild even if cached")
    p.add_argument("--cache-dir", help="build cache folder (default: ~/.cache/sparsec)")
    p.add_argument("--no-host-profile", action="store_true",
                   help="choose kernels by the kernel table's costs even where `sparsec "
                        "calibrate` measured this CPU")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """--input and --seed, as sparsec.inputs.model_inputs reads them."""
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", default=[],
                   help="an input array (repeatable); omitted inputs get seeded random values "
                        "the model accepts (masks ones, token types zeros, token ids within "
                        "the table)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs")


def _build_options(args) -> dict:
    """compile_model's keyword arguments from the options of _add_build_options."""
    from sparsec.compiler.frontend import parse_input_shapes

    return dict(input_shapes=parse_input_shapes(args.input_shape), cache_dir=args.cache_dir,
                use_cache=not args.no_cache, force_pattern=args.force_pattern,
                quantize=args.quantize or {"int8": "dynamic", "bf16": "bf16"}.get(args.dtype),
                reorder=not args.no_reorder, max_memory=args.max_memory, emulate=args.emulate,
                host_profile=not args.no_host_profile)


def _changed_build_options(args) -> list[str]:
    """The build options given other than as their defaults, as --flag names."""
    reference = argparse.ArgumentParser()
    _add_build_options(reference)
    return [f"--{action.option_strings[0].lstrip('-')}" for action in reference._actions
            if action.dest != "help" and getattr(args, action.dest) != action.default]


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
    except OSError as exc:  # unwritable output folder, full disk, ...
        print(f"sparsec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsec: interrupted", file=sys.stderr)
        return 130


def _compile(*args, **options):
    """api.compile_model, its portable-kernel warnings printed as `sparsec: warning: ...`
    (one line per layer) instead of Python's warning format; other warnings as usual."""
    from sparsec.api import compile_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PortableKernelWarning)
        result = compile_model(*args, **options)
    for warning in caught:
        if issubclass(warning.category, PortableKernelWarning):
            print(f"sparsec: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return result


def cmd_compile(args) -> int:
    result = _compile(args.model, args.target, args.output, dump_ir=args.dump_ir,
                      keep_source=args.keep_source, profile=args.profile,
                      **_build_options(args))
    if args.report:
        if "buckets" in result.info:
            print(f"layers of the longest bucket, {result.info['buckets']['lengths'][-1]} "
                  "(each bucket's are in `sparsec info --json`, \"plans\"):")
        print(format_layers(result.info))
        print(f"kernel costs: {'measured on this host, ' + str(result.host_profile)}"
              if result.host_profile else "kernel costs: the kernel table's "
              "(`sparsec calibrate` measures this host's)")
    emulated = f"; {result.info['emulated']}" if "emulated" in result.info else ""
    buckets = result.info.get("buckets")
    plans = (f", {len(buckets['lengths'])} plans for lengths "
             f"{', '.join(map(str, buckets['lengths']))}" if buckets else "")
    print(f"wrote {result.library} (target {result.info['target']}{emulated}{plans}) and "
          f"{result.header}")
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


def _check_benchmark_args(args) -> bool:
    """Refuse contradictory options before building anything; True for an .onnx model."""
    is_onnx = Path(args.model).suffix == ".onnx"
    if not is_onnx and Path(args.model).suffix != ".so":
        raise SparsecError(f"benchmark takes a .onnx model or a .so library, got {args.model}")
    if not is_onnx and _changed_build_options(args):
        raise SparsecError(f"{', '.join(_changed_build_options(args))}: build options, for "
                           f"an .onnx model; {args.model} is built already")
    if args.compare and not is_onnx:
        raise SparsecError("--compare onnxruntime needs the .onnx model, not a library")
    if args.compare and args.streams != 1:
        raise SparsecError("--compare times one stream against onnxruntime; drop --streams")
    for flag, value, least in (("--streams", args.streams, 1), ("--threads", args.threads, 1),
                               ("--repeat", args.repeat, 1)):
        if value is not None and value < least:
            raise SparsecError(f"{flag} must be at least {least}, got {value}")
    for flag, value in (("--time", args.time), ("--warmup", args.warmup)):
        if value is not None and not value >= 0:
            raise SparsecError(f"{flag} must be a number of seconds, got {value}")
    return is_onnx


def _load_streams(library: Path, streams: int, threads: int | None) -> list:
    """One Module per stream; without --threads the physical cores are shared among them."""
    from sparsec.module import load

    first = load(library, threads=threads)
    if streams > 1 and threads is None:
        threads = max(1, first.threads // streams)
        first.close()
        first = load(library, threads=threads)
    return [first] + [load(library, threads=threads) for _ in range(streams - 1)]


class _Progress:
    """`sparsec benchmark: 3.0 s, 1234 runs` rewritten in place on stderr, when stderr is a
    terminal and the timing has gone on for a while; stdout (and --json) stay clean."""

    def __init__(self) -> None:
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, elapsed: float, runs: int) -> None:
        if self.enabled and elapsed >= PROGRESS_AFTER_SECONDS:
            sys.stderr.write(f"\rsparsec benchmark: {elapsed:.1f} s, {runs} runs ")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _onnxruntime_session(model: str, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise SparsecError("--compare onnxruntime needs onnxruntime, which is not installed: "
                           "pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types, one per failure
        raise SparsecError(f"onnxruntime cannot load {model}: {exc}") from None


def _stream_record(latencies: list[float], batch: int, seconds: float) -> dict:
    return {"runs": len(latencies), "seconds": seconds,
            "items_per_second": len(latencies) * batch / seconds if seconds else 0.0,
            "latency_ms": benchmark.latency_stats(latencies)}


def _compare(module, session, feeds: dict, budget, args, progress, batch: int) -> tuple:
    """sparsec and onnxruntime alternating on one thread: sparsec's timings, and onnxruntime's
    record with the latency ratio and each output's largest difference."""
    outputs = module.run(feeds)  # first: its InputError names a bad --input clearly
    try:
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except Exception as exc:  # onnxruntime's own exception types
        raise SparsecError(f"onnxruntime cannot run {args.model}: {exc}") from None
    differences = {}
    for name, got in outputs.items():
        wanted = np.asarray(expected[name])
        if wanted.shape != got.shape:
            raise SparsecError(f"output {name!r}: onnxruntime gives shape {wanted.shape}, "
                               f"the library {got.shape}")
        wide = wanted.astype(np.float64)
        differences[name] = {
            "max_abs_diff": float(np.max(np.abs(got.astype(np.float64) - wide)))
            if got.size else 0.0,
            "max_abs": float(np.max(np.abs(wide))) if got.size else 0.0}
    timings = benchmark.alternate({"sparsec": lambda: module.run(feeds),
                                   "onnxruntime": lambda: session.run(None, feeds)},
                                  budget, args.warmup, progress=progress)
    import onnxruntime

    theirs = timings["onnxruntime"].latencies
    ours = timings["sparsec"].latencies
    compared = dict(_stream_record(theirs, batch, sum(theirs)), engine="onnxruntime",
                    version=onnxruntime.__version__, threads=module.threads,
                    latency_ratio=float(np.mean(theirs) / np.mean(ours)), outputs=differences)
    return timings["sparsec"], compared


def cmd_benchmark(args) -> int:
    from sparsec import inputs

    is_onnx = _check_benchmark_args(args)
    budget = benchmark.Budget(DEFAULT_SECONDS if args.time is None else args.time, args.repeat)
    with tempfile.TemporaryDirectory(prefix="sparsec-benchmark-") as tmp:
        library = Path(args.model)
        if is_onnx:
            library = _compile(args.model, args.target, Path(tmp) / "model.so",
                               **_build_options(args)).library
        # every stream loads before the folder goes: a library's mapping outlives its file
        modules = _load_streams(library, args.streams, args.threads)
    progress = _Progress()
    try:
        generated: list[str] = []
        feeds = inputs.model_inputs(modules[0].info["inputs"], args.input, args.seed,
                                    log=generated.append, buckets=modules[0].info.get("buckets"))
        shape = modules[0].inputs[0].shape if modules[0].inputs else ()
        record = {"model": args.model, "target": modules[0].target,
                  "batch": shape[0] if shape else 1, "streams": args.streams,
                  "threads": modules[0].threads, "warmup_seconds": args.warmup,
                  "inputs": generated}
        if args.compare:
            session = _onnxruntime_session(args.model, modules[0].threads)
            timings, record["compare"] = _compare(modules[0], session, feeds, budget, args,
                                                  progress, record["batch"])
            streams, wall = [timings], sum(timings.latencies)
            reduced = sorted({layer["weight_dtype"] for layer in modules[0].info["layers"]
                              if layer.get("weight_dtype", "float32") != "float32"})
            if reduced:
                record["compare"]["note"] = (
                    f"the library's matrix products are {' and '.join(reduced)}; onnxruntime "
                    "runs the model as given, so the difference includes that rounding")
        else:
            streams, wall = benchmark.run_streams(
                [lambda module=module: module.run(feeds) for module in modules], budget,
                args.warmup, progress)
    finally:
        progress.clear()
        for module in modules:
            module.close()
    record.update(_stream_record([s for t in streams for s in t.latencies], record["batch"],
                                 wall),
                  per_stream=[_stream_record(t.latencies, record["batch"], sum(t.latencies))
                              for t in streams])
    print(json.dumps(record, indent=2) if args.json else format_benchmark(record))
    return 0


def _latency_line(record: dict) -> str:
    ms = record["latency_ms"]
    return (f"{record['runs']} runs, {record['items_per_second']:.1f} items/s, latency ms: "
            f"mean {ms['mean']:.3f}, p50 {ms['p50']:.3f}, p90 {ms['p90']:.3f}, "
            f"p99 {ms['p99']:.3f}")


def format_benchmark(record: dict) -> str:
    streams = record["streams"]
    lines = [f"{record['model']}: target {record['target']}, batch {record['batch']}, "
             f"{streams} stream{'s' if streams > 1 else ''} x {record['threads']} thread"
             f"{'s' if record['threads'] > 1 else ''}, {record['seconds']:.2f} s timed after "
             f"{record['warmup_seconds']:g} s warm-up"]
    lines += record["inputs"]
    lines.append(f"sparsec: {_latency_line(record)}")
    if streams > 1:
        lines += [f"  stream {i}: {_latency_line(s)}" for i, s in enumerate(record["per_stream"])]
    compared = record.get("compare")
    if compared:
        lines.append(f"onnxruntime {compared['version']}: {_latency_line(compared)}")
        lines.append(f"onnxruntime / sparsec mean latency: {compared['latency_ratio']:.2f}x "
                     "(alternating rounds, same inputs and threads)")
        for name, diff in compared["outputs"].items():
            lines.append(f"output {name!r}: max abs diff {diff['max_abs_diff']:.3g} from "
                         f"onnxruntime's (its values up to {diff['max_abs']:.3g})")
        if "note" in compared:
            lines.append(f"note: {compared['note']}")
    return "\n".join(lines)


def format_profile(layers: list[dict], runs: int, top: int = 15) -> str:
    """Time per operator kind, then the slowest layers; milliseconds per run."""
    total = sum(layer["ms"] for layer in layers) / runs
    by_op: dict[str, list[float]] = {}
    for layer in layers:
        by_op.setdefault(layer["op"], []).append(layer["ms"] / runs)
    lines = [f"{total:.3f} ms per run in {len(layers)} layers", "",
             f"{'op':<20} {'layers':>6} {'ms':>9} {'share':>6}"]
    for op, times in sorted(by_op.items(), key=lambda item: -sum(item[1])):
        lines.append(f"{op:<20} {len(times):>6} {sum(times):>9.3f} "
                     f"{100 * sum(times) / total if total else 0:>5.1f}%")
    lines += ["", f"{'slowest layers':<56} {'kernel':<28} {'ms':>8}"]
    for layer in sorted(layers, key=lambda layer: -layer["ms"])[:top]:
        lines.append(f"{(layer['node'] or '?')[-56:]:<56} {layer['kernel'][:28]:<28} "
                     f"{layer['ms'] / runs:>8.3f}")
    return "\n".join(lines)


def _portable_note(layer: dict) -> str:
    return f"PORTABLE C: {layer['portable']}; " if "portable" in layer else ""


def _reorder_note(layer: dict) -> str:
    reorder = layer.get("reorder")
    return f"; reorder ({reorder['kind']}): {reorder['result']}" if reorder else ""


def _layout_note(layer: dict) -> str:
    transposed = [side for side, layout in layer.get("layouts", {}).items()
                  if layout != "row-major"]
    return f"; {' and '.join(transposed)} {'is' if len(transposed) == 1 else 'are'} " \
        "feature-major (no transpose between token-tile kernels)" if transposed else ""


def format_layers(info: dict) -> str:
    rows = [("layer", "weight K x N", "dtype", "density", "pattern", "kernel", "why")]
    for layer in info["layers"]:
        if "shape" not in layer and "portable" not in layer:
            continue
        rows.append((layer["node"] or "?", "x".join(map(str, layer.get("shape", ["-"]))),
                     layer.get("weight_dtype", "float32"),
                     f"{layer['density']:.3f}" if "density" in layer else "-",
                     layer.get("pattern", "dense" if "shape" in layer else "-"),
                     layer["kernel"],
                     _portable_note(layer) + layer.get("reason", "") + _layout_note(layer)
                     + _reorder_note(layer)))
    notes = [layer["unfused"] for layer in info["layers"] if "unfused" in layer]
    if len(rows) == 1:
        return "\n".join(["no matrix layers", *notes])
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6]
             for r in rows]
    return "\n".join(lines + notes)


def _describe(tensors: list[dict]) -> str:
    return "\n".join(f"  {t['name']!r}: {t['dtype']}[{'x'.join(map(str, t['shape']))}]"
                     for t in tensors)


def cmd_info(args) -> int:
    info = read_info(Path(args.library))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.library}: sparsec {info['sparsec_version']}, target {info['target']}"
          + (f" (needs {', '.join(info['features'])})" if info["features"] else ""))
    if "emulated" in info:
        print(f"EMULATED: {info['emulated']}")
    print(f"arena: {info['arena_bytes']} bytes")
    if "buckets" in info:
        bucketed = ", ".join(f"{name!r} axis {axes[0]}"
                             for name, axes in info["buckets"]["inputs"].items())
        print(f"buckets: lengths {', '.join(map(str, info['buckets']['lengths']))} along "
              f"{bucketed}; the shapes below are the longest's")
    print("inputs:\n" + _describe(info["inputs"]))
    print("outputs:\n" + _describe(info["outputs"]))
    print("layers:\n" + format_layers(info))
    return 0


def read_info(path: Path) -> dict:
    """Model info without running target code: the library's info function needs no CPU
    features, so this works for libraries the host cannot execute (same architecture)."""
    from sparsec.module import _ffi

    if not path.is_file():
        raise SparsecError(f"no compiled model at {path}")
    try:
        lib = _ffi().dlopen(str(path.resolve()))
        return json.loads(_ffi().string(lib.sparsec_model_info()).decode())
    except (OSError, AttributeError) as exc:
        raise SparsecError(f"{path} is not a sparsec library for this machine: {exc}") from None


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

    target = targets.resolve(args.target)
    with tempfile.TemporaryDirectory(prefix="sparsec-verify-") as tmp:
        result = _compile(args.model, target.name, Path(tmp) / "model.so",
                               input_shapes=parse_input_shapes(args.input_shape),
                               quantize=args.quantize, cache_dir=args.cache_dir,
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
        close = np.allclose(got, wanted, rtol=args.rtol, atol=args.atol, equal_nan=True)
        failed |= not close
        diff = np.max(np.abs(got.astype(np.float64) - wanted)) if got.size else 0.0
        print(f"  {name}: max abs diff {diff:.3g} -> {'ok' if close else 'MISMATCH'}"
              f" (rtol {args.rtol:g}, atol {args.atol:g})")
    return 1 if failed else 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "benchmark": cmd_benchmark,
            "info": cmd_info, "verify": cmd_verify, "targets": cmd_targets,
            "calibrate": cmd_calibrate}


if __name__ == "__main__":
    sys.exit(main())
