"""`sparsec benchmark`: time a model or a library, alone, in streams, or against onnxruntime."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparsec import benchmark
from sparsec.cli_options import build_options, changed_build_options, compile_printing_warnings
from sparsec.errors import SparsecError

DEFAULT_SECONDS = 5.0


PROGRESS_AFTER_SECONDS = 2.0


def _check_benchmark_args(args) -> bool:
    """Refuse contradictory options before building anything; True for an .onnx model."""
    is_onnx = Path(args.model).suffix == ".onnx"
    if not is_onnx and Path(args.model).suffix != ".so":
        raise SparsecError(f"benchmark takes a .onnx model or a .so library, got {args.model}")
    if not is_onnx and changed_build_options(args):
        raise SparsecError(f"{', '.join(changed_build_options(args))}: build options, for "
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
            library = compile_printing_warnings(args.model, args.target, Path(tmp) / "model.so",
                               **build_options(args)).library
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
