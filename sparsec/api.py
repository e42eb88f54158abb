"""compile(): the whole road from an ONNX model to a shared library, driven from one place."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from sparsec.codegen import build as builder
from sparsec.codegen import emit, kernels, profiles, targets
from sparsec.compiler import buckets, frontend, limits
from sparsec.compiler.ir import Graph
from sparsec.compiler.passes import PassContext, run_pipeline
from sparsec.errors import SparsecError
from sparsec.version import __version__


@dataclass
class CompileResult:
    library: Path
    header: Path
    info: dict
    graph: Graph
    host_profile: Path | None = None  # the measured costs kernels were chosen by, if any


def compile_model(model: str | os.PathLike | onnx.ModelProto, target: str = "native",
                  output: str | os.PathLike | None = None, *,
                  input_shapes: dict[str, tuple] | None = None,
                  dump_ir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  verify_each: bool = False, keep_source: str | os.PathLike | None = None,
                  extra_cflags: tuple[str, ...] = (),
                  force_pattern: str | None = None,
                  quantize: str | None = None, layouts: bool = True,
                  parallel_min_ns: float | None = None,
                  profile: bool = False, reorder: bool = True,
                  max_memory: int | str | None = None, emulate: bool = False,
                  host_profile: bool = True) -> CompileResult:
    """Compile and return the library path, its C header, its model info and the final IR.
    profile: time every layer (`Module.profile()`), at about 50 ns a layer.
    reorder: let the reorder-blocks pass permute channels between layers (False: never).
    max_memory: bytes (or "8G") that any tensor, and the weights plus arena, may take.
    emulate: build the target's newest instructions as scalar C (x86-amx: AMX tiles), for
    testing on a CPU without them; the library says so in its info.
    host_profile: where the target runs natively here and `sparsec calibrate` measured this
    CPU, choose kernels by its measured costs instead of the kernel table's."""
    resolved = targets.resolve(target)
    measured, profile_path = profiles.load(resolved) if host_profile else ({}, None)
    if emulate and resolved.emulation is None:
        raise SparsecError(f"target {resolved.name} has no emulation build; emulate applies to "
                           + ", ".join(t.name for t in targets.TARGETS.values() if t.emulation))
    max_memory = limits.DEFAULT_MAX_MEMORY if max_memory is None else (
        max_memory if isinstance(max_memory, int) and max_memory > 0
        else limits.parse_size(max_memory))
    if output is None:
        if not isinstance(model, (str, os.PathLike)):
            raise SparsecError("compile(): pass output= when the model is an onnx.ModelProto")
        output = Path(Path(model).stem + ".so")
    output = Path(output)
    if output.suffix != ".so":
        raise SparsecError(f"output {str(output)!r} must end in .so")
    if output.stem == "sparsec":
        raise SparsecError("output sparsec.so would put the model header where the ABI header "
                           "sparsec.h goes; choose another name")
    ctx = PassContext(cost=kernels.cost_model(resolved, "float32", measured),
                      verify_each=verify_each,
                      dump_dir=Path(dump_ir) if dump_ir else None, force_pattern=force_pattern,
                      quantize=quantize, int8_cost=kernels.cost_model(resolved, "int8", measured),
                      bf16_cost=kernels.cost_model(resolved, "bfloat16", measured),
                      reorder=reorder,
                      max_memory=max_memory,
                      scratch_bytes=lambda g, n: kernels.scratch_bytes(g, n, resolved),
                      layouts=(lambda g, n: kernels.layout_support(g, n, resolved))
                      if layouts else None)
    graphs, bucket_info = _plans(model, input_shapes, max_memory, ctx)
    rendered = emit.emit_plans(graphs, resolved, __version__,
                               kernels.PARALLEL_MIN_NS if parallel_min_ns is None
                               else parallel_min_ns, emulate, bucket_info)
    flags = (resolved.emulation.flags if emulate else ()) + tuple(extra_cflags)
    builder.build(rendered, resolved, output,
                  cache_dir=Path(cache_dir) if cache_dir else None, use_cache=use_cache,
                  extra_flags=flags + (("-DSPARSEC_PROFILE",) if profile else ()),
                  keep_source=Path(keep_source) if keep_source else None)
    header = output.with_suffix(".h")
    builder.atomic_write(header, rendered.model_h.encode())
    builder.atomic_write(output.parent / "sparsec.h",
                         (builder.runtime_dir() / "sparsec.h").read_bytes())
    return CompileResult(output, header, rendered.info, graphs[-1], profile_path)


def _plans(model, input_shapes: dict | None, max_memory: int,
           ctx: PassContext) -> tuple[list[Graph], dict | None]:
    """The planned graph, or with buckets one per length (shortest first) and the buckets'
    record for the model info (compiler/buckets.py)."""
    if buckets.split(input_shapes or {})[2] is None:
        return [run_pipeline(frontend.import_model(model, input_shapes, max_memory), ctx)], None
    proto = frontend.load_model(model)  # read once, imported once per length
    request = buckets.expand(proto, input_shapes)
    graphs = []
    for length in request.lengths:
        dump_dir = ctx.dump_dir / f"bucket-{length}" if ctx.dump_dir else None
        graph = frontend.import_model(proto, request.shapes(length), max_memory)
        graphs.append(run_pipeline(graph, dataclasses.replace(ctx, dump_dir=dump_dir, log=[])))
    return graphs, buckets.record(request, graphs)


def compile(model: str | os.PathLike | onnx.ModelProto, target: str = "native",
            output: str | os.PathLike | None = None, **options) -> Path:
    """Compile an ONNX model (path or ModelProto) into a shared library; returns its path.

    Options: input_shapes={"name": (1, 128)} pins dynamic dimensions, and one dimension may
    be a list of lengths, buckets: {"input_ids": (1, [32, 64, 128])} builds one plan per
    length into the library (README, Variable-length inputs); dump_ir=DIR writes the IR
    after every pass; cache_dir/use_cache control the build cache; force_pattern="4x1" (or
    "dense") overrides the cost model's choice for every weight; quantize="dynamic" runs the
    matrix products in int8 (weights per output channel, activations per tensor at run time);
    layouts=False keeps every activation row-major (choose_layouts off); parallel_min_ns: the
    predicted time below which a layer runs on one thread (default kernels.PARALLEL_MIN_NS);
    max_memory=8 << 30 (or "8G") raises the memory limit (default limits.DEFAULT_MAX_MEMORY).
    """
    return compile_model(model, target, output, **options).library

