"""Command-line options that several `sparsec` commands share, and compiling with them."""

from __future__ import annotations

import argparse
import sys
import warnings

from sparsec.errors import PortableKernelWarning


def add_build_options(p: argparse.ArgumentParser) -> None:
    """How to build a library from an ONNX model: the options `compile` and `benchmark` share
    (read back by build_options)."""
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
    p.add_argument("--no-mixed-precision", action="store_true",
                   help="with --dtype int8 or bf16, lower every layer, also those whose "
                        "float32 kernel is predicted faster (kept float32 by default; "
                        "--report says which)")
    p.add_argument("--name", metavar="PREFIX",
                   help="export the library's API as PREFIX_create, PREFIX_run, ... and name "
                        "the header's macros PREFIX_MODEL_*, so several models link into one "
                        "program (a C identifier; default: sparsec_)")
    p.add_argument("--emit", choices=["shared", "static"], default="shared",
                   help="static: a static archive (-o X.a) to link into a program, every "
                        "symbol but the API local (default: a shared library)")
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


def add_input_options(p: argparse.ArgumentParser) -> None:
    """--input and --seed, as sparsec.inputs.model_inputs reads them."""
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", default=[],
                   help="an input array (repeatable); omitted inputs get seeded random values "
                        "the model accepts (masks ones, token types zeros, token ids within "
                        "the table)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs")


def build_options(args) -> dict:
    """compile_model's keyword arguments from the options of add_build_options."""
    from sparsec.compiler.frontend import parse_input_shapes
    from sparsec.compiler.options import DTYPES

    return dict(input_shapes=parse_input_shapes(args.input_shape), cache_dir=args.cache_dir,
                use_cache=not args.no_cache, force_pattern=args.force_pattern,
                quantize=args.quantize or DTYPES[args.dtype],
                mixed_precision=not args.no_mixed_precision, name=args.name, emit=args.emit,
                reorder=not args.no_reorder, max_memory=args.max_memory, emulate=args.emulate,
                host_profile=not args.no_host_profile)


def changed_build_options(args) -> list[str]:
    """The build options given other than as their defaults, as --flag names."""
    reference = argparse.ArgumentParser()
    add_build_options(reference)
    return [f"--{action.option_strings[0].lstrip('-')}" for action in reference._actions
            if action.dest != "help" and getattr(args, action.dest) != action.default]


def compile_printing_warnings(*args, **options):
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
