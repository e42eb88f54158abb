"""compile(): the whole road from an ONNX model to a shared library, driven from one place."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from sparsec import compile_cache
from sparsec.codegen import build as builder
from sparsec.codegen import cache_files, costs, emit, profiles, selection, targets
from sparsec.compiler import buckets, frontend, limits
from sparsec.compiler.ir import Graph
from sparsec.compiler.options import CompileOptions
from sparsec.compiler.passes import PassContext, run_pipeline
from sparsec.errors import PortableKernelWarning, SparsecError, user_stacklevel
from sparsec.progress import Progress
from sparsec.version import __version__


@dataclass
class CompileResult:
    library: Path
    header: Path
    info: dict
    _graph: Graph | None = field(default=None, repr=False)  # read it as .graph
    host_profile: Path | None = None  # the measured costs kernels were chosen by, if any
    cached: bool = False  # the library came whole from the build cache
    replay: Callable[[], Graph] | None = field(default=None, repr=False)

    @property
    def graph(self) -> Graph:
        """The final IR; after a cache hit, made again (the passes, no C) when first asked."""
        if self._graph is None and self.replay is not None:
            self._graph = self.replay()
        return self._graph


@limits.out_of_memory_is_refusal
def compile_model(model: str | os.PathLike | onnx.ModelProto, target: str = "native",
                  output: str | os.PathLike | None = None, *,
                  options: CompileOptions | None = None, progress: Progress | None = None,
                  **keywords) -> CompileResult:
    """Compile and return the library path, its C header, its model info and the final IR.

    The options are a `CompileOptions`, or its fields as keywords (not both), e.g.
    profile=True: time every layer (`Module.profile()`), at about 50 ns a layer;
    reorder=False: never permute channels between layers; max_memory="8G": bytes that any
    tensor, and the weights plus arena, may take; emulate=True: build the target's newest
    instructions as scalar C (x86-amx: AMX tiles), for testing on a CPU without them (the
    library says so in its info); host_profile=False: choose kernels by the kernel table's
    costs even where `sparsec calibrate` measured this CPU. `progress` (sparsec.progress)
    hears of each phase as it runs; it changes nothing in the library."""
    progress = progress or Progress()
    try:
        return _compile(model, target, output, options, keywords, progress)
    finally:
        progress.finish()


def _compile(model, target: str, output, options: CompileOptions | None, keywords: dict,
             progress: Progress) -> CompileResult:
    if options is not None and keywords:
        raise SparsecError("compile(): pass options= or option keywords, not both")
    options = options or CompileOptions.from_keywords(**keywords)
    resolved = targets.resolve(target)
    measured, profile_path = profiles.load(resolved) if options.host_profile else ({}, None)
    if options.emulate and resolved.emulation is None:
        raise SparsecError(f"target {resolved.name} has no emulation build; emulate applies to "
                           + ", ".join(t.name for t in targets.TARGETS.values() if t.emulation))
    output = _output_path(model, output, ".a" if options.emit == "static" else ".so")
    header = output.with_suffix(".h")
    ctx = PassContext(cost=costs.cost_model(resolved, "float32", measured), options=options,
                      int8_cost=costs.cost_model(resolved, "int8", measured),
                      bf16_cost=costs.cost_model(resolved, "bfloat16", measured),
                      select_kernel=lambda g, n: selection.choose(g, n, resolved),
                      scratch_bytes=selection.scratch_bytes,
                      layouts=selection.layout_support if options.layouts else None,
                      target=resolved.name, on_pass=progress.phase)
    cache_dir = options.cache_dir or builder.default_cache_dir()
    key = None
    if compile_cache.cacheable(options):
        progress.phase("cache lookup")
        key = compile_cache.compile_key(model, resolved.name, options,
                                        builder.find_compiler(resolved), measured)
        info = compile_cache.restore(cache_dir, key, output, header) if key else None
        if info is not None:
            progress.cached("compile")
            return _cached_result(model, ctx, output, header, info, profile_path)
    progress.phase("import")
    graphs, bucket_info = _plans(model, ctx)
    progress.phase("emit C")
    rendered = emit.emit_plans(graphs, resolved, __version__,
                               costs.PARALLEL_MIN_NS if options.parallel_min_ns is None
                               else options.parallel_min_ns, options.emulate, bucket_info,
                               options.name)
    flags = ((resolved.emulation.flags if options.emulate else ()) + options.extra_cflags
             + (("-DSPARSEC_PROFILE",) if options.profile else ()))
    progress.phase("C build")
    builder.build(rendered, resolved, output, cache_dir=options.cache_dir,
                  use_cache=options.use_cache, extra_flags=flags,
                  keep_source=options.keep_source, progress=progress,
                  static=options.emit == "static")
    cache_files.atomic_write(header, rendered.model_h.encode())
    _write_abi_header(output)
    if key is not None:
        library_key = builder.cache_key(rendered, resolved, builder.find_compiler(resolved),
                                        flags, options.emit == "static")
        compile_cache.store(cache_dir, key, library_key, header, rendered.info)
    if options.use_cache:
        compile_cache.prune(cache_dir)
    return CompileResult(output, header, rendered.info, graphs[-1], profile_path)


def _write_abi_header(output: Path) -> None:
    cache_files.atomic_write(output.parent / "sparsec.h",
                         (builder.runtime_dir() / "sparsec.h").read_bytes())


def _cached_result(model, ctx: PassContext, output: Path, header: Path, info: dict,
                   profile_path: Path | None) -> CompileResult:
    """A whole compile restored from the cache: its layers' portable-C warnings said again
    (never silently), its IR made again only if asked for."""
    _write_abi_header(output)
    for plan in info.get("plans", [info]):
        for layer in plan.get("layers", []):
            if "portable" in layer:
                warnings.warn(f"layer {layer['node']!r}: {layer['portable']}",
                              PortableKernelWarning, stacklevel=user_stacklevel())
    quiet = dataclasses.replace(ctx, on_pass=None)
    return CompileResult(output, header, info, None, profile_path, cached=True,
                         replay=lambda: _plans(model, quiet)[0][-1])


DEFAULT_OUTPUT_DIR = Path("build")
"""Where a compile without an output goes (relative to the working directory): the library,
its header and sparsec.h are three files, which used to land among the user's own."""


def _output_path(model, output, suffix: str) -> Path:
    if output is None:
        if not isinstance(model, (str, os.PathLike)):
            raise SparsecError("compile(): pass output= when the model is an onnx.ModelProto")
        output = DEFAULT_OUTPUT_DIR / (Path(model).stem + suffix)
    output = Path(output)
    if output.suffix != suffix:
        what = "a static archive" if suffix == ".a" else "a shared library"
        raise SparsecError(f"output {str(output)!r} must end in {suffix} ({what})")
    if output.stem == "sparsec":
        raise SparsecError(f"output sparsec{suffix} would put the model header where the ABI "
                           "header sparsec.h goes; choose another name")
    return output


def _plans(model, ctx: PassContext) -> tuple[list[Graph], dict | None]:
    """The planned graph, or with buckets one per length (shortest first) and the buckets'
    record for the model info (compiler/buckets.py)."""
    input_shapes, max_memory = ctx.options.input_shapes, ctx.options.max_memory
    if buckets.split(input_shapes or {})[2] is None:
        return [run_pipeline(frontend.import_model(model, input_shapes, max_memory), ctx)], None
    loaded = frontend.load_model(model)  # read once, imported once per length
    request = buckets.expand(loaded.proto, input_shapes)
    graphs = []
    for length in request.lengths:
        dump_ir = ctx.options.dump_ir / f"bucket-{length}" if ctx.options.dump_ir else None
        graph = frontend.import_model(loaded, request.shapes(length), max_memory)
        options = dataclasses.replace(ctx.options, dump_ir=dump_ir)
        graphs.append(run_pipeline(graph, dataclasses.replace(ctx, options=options, log=[])))
    return graphs, buckets.record(request, graphs)


def compile(model: str | os.PathLike | onnx.ModelProto, target: str = "native",
            output: str | os.PathLike | None = None, **options) -> Path:
    """Compile an ONNX model (path or ModelProto) into a shared library; returns its path
    (default for a path: build/MODEL_STEM.so under the working directory).

    Options are `CompileOptions` fields (sparsec/compiler/options.py), given as keywords or as
    options=CompileOptions(...): input_shapes={"name": (1, 128)} pins dynamic dimensions, and
    one dimension may be a list of lengths, buckets: {"input_ids": (1, [32, 64, 128])} builds
    one plan per length into the library (README, Variable-length inputs); dump_ir=DIR writes
    the IR after every pass; cache_dir/use_cache control the build cache; force_pattern="4x1"
    (or "dense") overrides the cost model's choice for every weight; quantize="dynamic" runs the
    matrix products in int8 (weights per output channel, activations per tensor at run time),
    but layers the cost model predicts faster in float32 stay float32 unless
    mixed_precision=False;
    layouts=False keeps every activation row-major (choose_layouts off); parallel_min_ns: the
    predicted time below which a layer runs on one thread (default costs.PARALLEL_MIN_NS);
    max_memory=8 << 30 (or "8G") raises the memory limit (default limits.DEFAULT_MAX_MEMORY).
    """
    return compile_model(model, target, output, **options).library

