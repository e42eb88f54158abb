"""The `sparsec` command: compile, run, info, targets.

User errors print `sparsec: error: <message>` and exit 1; no traceback for anything a user can
cause (bad file, unsupported operator, bad shape, failed build).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from sparsec.errors import PortableKernelWarning, SparsecError
from sparsec.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsec", description="Ahead-of-time compiler for sparse neural networks.")
    parser.add_argument("--version", action="version", version=f"sparsec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model into a shared library")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", help="library to write (default: MODEL_STEM.so)")
    p.add_argument("--target", default="native",
                   help="target to compile for (default: native; see `sparsec targets`)")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD...",
                   help="pin a dynamic input shape, e.g. input_ids=1x128 (repeatable)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--report", action="store_true",
                   help="print per-layer sparsity, chosen kernel and why")
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
    p.add_argument("--profile", action="store_true",
                   help="time every layer at run time (see `sparsec run --profile`)")
    p.add_argument("--no-reorder", action="store_true",
                   help="keep every weight's channel order (no block reordering)")
    p.add_argument("--keep-source", metavar="DIR", help="also write model.c and weights.bin")
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

    p = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p.add_argument("library")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", default=[],
                   help="an input array (repeatable); omitted inputs get seeded random values")
    p.add_argument("--out", metavar="FILE.npz", help="save outputs instead of printing them")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    p.add_argument("--threads", type=int,
                   help="threads to run with (default: one per physical core)")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="run N times")
    p.add_argument("--profile", action="store_true",
                   help="print the time per layer and per operator (needs a library compiled "
                        "with --profile)")

    p = sub.add_parser("info", help="describe a compiled library")
    p.add_argument("library")
    p.add_argument("--json", action="store_true", help="print the raw model info JSON")

    p = sub.add_parser("verify", help="compile for a target, run it (under qemu-user when the "
                       "host is another architecture) and compare with onnxruntime")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--target", default="native")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD...")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", default=[],
                   help="an input array (repeatable); omitted inputs get seeded random values")
    p.add_argument("--seed", type=int, default=0)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SparsecError as exc:
        print(f"sparsec: error: {exc}", file=sys.stderr)
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
    from sparsec.compiler.frontend import parse_input_shapes

    result = _compile(args.model, args.target, args.output,
                      input_shapes=parse_input_shapes(args.input_shape),
                      dump_ir=args.dump_ir, cache_dir=args.cache_dir,
                      use_cache=not args.no_cache, keep_source=args.keep_source,
                      force_pattern=args.force_pattern,
                      quantize=args.quantize or {"int8": "dynamic", "bf16": "bf16"}.get(args.dtype),
                      profile=args.profile, reorder=not args.no_reorder,
                      max_memory=args.max_memory, emulate=args.emulate,
                      host_profile=not args.no_host_profile)
    if args.report:
        print(format_layers(result.info))
        print(f"kernel costs: {'measured on this host, ' + str(result.host_profile)}"
              if result.host_profile else "kernel costs: the kernel table's "
              "(`sparsec calibrate` measures this host's)")
    emulated = f"; {result.info['emulated']}" if "emulated" in result.info else ""
    print(f"wrote {result.library} (target {result.info['target']}{emulated}) and "
          f"{result.header}")
    return 0


def _read_inputs(module, specs: list[str], seed: int) -> dict:
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SparsecError(f"bad --input {spec!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SparsecError(f"cannot read input {name!r} from {path}: {exc}") from None
    known = [t.name for t in module.inputs]
    unknown = [name for name in feeds if name not in known]
    if unknown:
        raise SparsecError(f"--input names {', '.join(map(repr, unknown))}, not an input of "
                           f"this model; its inputs are: {', '.join(map(repr, known))}")
    rng = np.random.default_rng(seed)
    for spec in module.inputs:
        if spec.name not in feeds:
            feeds[spec.name] = _random_input(rng, spec)
            print(f"input {spec.name!r}: random {spec.describe()} (seed {seed})")
    return feeds


def _random_input(rng, spec) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(spec.dtype)
    return rng.integers(0, 8, spec.shape).astype(spec.dtype)


def cmd_run(args) -> int:
    from sparsec.module import load

    if args.repeat < 1:
        raise SparsecError(f"--repeat must be at least 1, got {args.repeat}")
    with load(args.library, threads=args.threads) as module:
        feeds = _read_inputs(module, args.input, args.seed)
        for _ in range(args.repeat):
            outputs = module.run(feeds)
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
    from sparsec.codegen import kernels, targets

    target = targets.resolve(args.target)
    print(f"timing {target.name}'s kernels on 1 thread, ns per activation row and weight "
          "element (dense) or nonzero block:", flush=True)
    path, measured = calibrate(target.name, quick=args.quick,
                               progress=lambda line: print(f"  {line}", flush=True))
    changed = []
    for dtype in sorted({d for d, _ in measured}):
        table = kernels.cost_model(target, dtype)
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

    from sparsec import emulation
    from sparsec.codegen import targets
    from sparsec.compiler.frontend import parse_input_shapes

    target = targets.resolve(args.target)
    with tempfile.TemporaryDirectory(prefix="sparsec-verify-") as tmp:
        result = _compile(args.model, target.name, Path(tmp) / "model.so",
                               input_shapes=parse_input_shapes(args.input_shape),
                               quantize=args.quantize, cache_dir=args.cache_dir,
                               max_memory=args.max_memory,
                               emulate=targets.runs_emulated(target))
        feeds = _verify_inputs(result.info, args.input, args.seed)
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


def _verify_inputs(info: dict, specs: list[str], seed: int) -> dict:
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SparsecError(f"bad --input {spec!r}: expected NAME=FILE.npy")
        feeds[name] = np.load(path, allow_pickle=False)
    rng = np.random.default_rng(seed)
    for tensor in info["inputs"]:
        if tensor["name"] in feeds:
            continue
        dtype = np.dtype(tensor["dtype"])
        # integers 0 and 1: valid token ids, mask values and segment ids for any model
        feeds[tensor["name"]] = (rng.standard_normal(tensor["shape"]).astype(dtype)
                                 if dtype.kind == "f" else
                                 rng.integers(0, 2, tensor["shape"]).astype(dtype))
    return feeds


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "info": cmd_info, "verify": cmd_verify,
            "targets": cmd_targets, "calibrate": cmd_calibrate}


if __name__ == "__main__":
    sys.exit(main())
