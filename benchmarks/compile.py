"""Compile time and peak memory against graph size, on 1 and 2 cores: is compiling linear in
the node count, and does the C build use the cores?

    python benchmarks/compile.py [--nodes 1000,4000,20000] [--shapes chain,mlp] [--cores 1,2]
        [--models PATH,...] [--rebuild-nodes 300] [--repeat 3] [--target native]
        [--profile DIR] [--name compile]

Models: `chain`, N Relu nodes in a row on a 1x64 input (the shape of graph an exporter's
decompositions give); `mlp`, N/3 Dense layers (MatMul + Add + Relu, 64x64 weights, 80 %
zeros), so the weights, sparsity detection and the matrix kernels grow with N too; and real
encoders given by path (default: benchmarks/models/minilm-4x1-90.onnx, bert-base-4x1-90.onnx
and bert-large-*.onnx, which benchmarks/export_encoders.py writes; one that is absent is
skipped, saying so), their dynamic dimensions pinned to batch 1, sequence 128.

Each compile runs in a fresh process with the build cache off (use_cache=False, the CLI's
--no-cache), its CPU affinity (and so its C compilers') cut to the first 1 or 2 of the CPUs
this process may use (--cores), and is split into phases: import and the passes (python),
rendering the C (emit), and the C compiler and link (build; the model's translation units
compile in parallel on the cores allowed). Peak RSS is the compile process's own (ru_maxrss of
self) and the largest C compiler's (of its children). Each cell is the median of --repeat
runs. --profile DIR also writes a cProfile of each case there.

The rebuild table: an mlp compiled with a fresh build cache, then again with one layer's
weights changed (the middle one): the second build compiles model.c and the units that
layer's change touched, and links the rest from the cache.

Writes benchmarks/results/NAME.md and NAME-rebuild.md. The machine the tables were made on is
shared with other work: its timings are noisy, which the medians only soften.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import onnx
from common import write_table
from onnx import TensorProto, helper, numpy_helper

WIDTH = 64
MODELS = Path(__file__).resolve().parent / "models"
ENCODERS = ("minilm-4x1-90.onnx", "bert-base-4x1-90.onnx", "bert-large-*.onnx")
SEQUENCE = 128


def chain_model(nodes: int) -> onnx.ModelProto:
    names = ["x"] + [f"r{i}" for i in range(nodes - 1)] + ["y"]
    graph = helper.make_graph(
        [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}")
         for i in range(nodes)],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model(nodes: int, density: float = 0.2, scaled_layer: int | None = None
              ) -> onnx.ModelProto:
    """nodes // 3 layers of MatMul, Add, Relu (fuse folds each into one Dense);
    `scaled_layer`'s weight doubled (the same zeros: a retrained layer)."""
    rng = np.random.default_rng(0)
    layers, initializers, current = [], [], "x"
    for i in range(max(1, nodes // 3)):
        weight = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
        weight *= rng.random((WIDTH, WIDTH)) < density
        if i == scaled_layer:
            weight *= 2
        initializers += [numpy_helper.from_array(weight, f"w{i}"),
                         numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32),
                                                 f"b{i}")]
        layers += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                   helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                   helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}")]
        current = f"h{i}"
    layers[-1].output[0] = "y"
    graph = helper.make_graph(
        layers, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def encoder_case(path: Path) -> dict:
    """A real model's case: its node count and the input shapes that pin its dynamic
    dimensions (batch 1, sequence SEQUENCE). Read in a process of its own (--describe): a
    process's peak RSS counts that of the process it was started from (the kernel carries the
    high-water mark across exec), so this one must stay small."""
    done = subprocess.run([sys.executable, __file__, "--describe", str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(dim.dim_param or not dim.dim_value for dim in dims):
            shapes[value.name] = [1 if i == 0 else SEQUENCE for i in range(len(dims))]
    return {"shape": "path", "path": str(path), "nodes": len(model.graph.node),
            "shapes": shapes}


def _model(case: dict, **changes):
    if case["shape"] == "path":
        return case["path"]
    return {"chain": chain_model, "mlp": mlp_model}[case["shape"]](case["nodes"], **changes)


# Runs a C compiler command and writes its peak RSS (KiB, its own processes') to a file. Spawned
# from the compile process, a compiler would report that process's peak as its own floor.
def _gnu_time() -> str | None:
    path = shutil.which("time")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if "GNU" in version.stdout + version.stderr else None


GNU_TIME = _gnu_time()
PROBE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN)"
         ".ru_maxrss)); sys.exit(code)")


def probed(argv: list[str], report: Path) -> list[str]:
    """`argv` run through GNU time (about a millisecond) or, without it, a small python."""
    if GNU_TIME:
        return [GNU_TIME, "-f", "%M", "-o", str(report), *argv]
    return [sys.executable, "-c", PROBE, str(report), *argv]


def _pin(cores: int) -> None:
    """This process, and the C compilers it starts, on the first `cores` of its CPUs."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])


class Phases:
    """Times emit and build inside sparsec.compile_model (the passes are the rest), counts the
    model sources the C compiler compiled and the units there were, and keeps the largest peak
    RSS of a compiler command (compiles and links)."""

    def __init__(self, workdir: Path):
        from sparsec.codegen import build, emit

        self.times = {"emit": 0.0, "build": 0.0}
        self.units = 0
        self.compiled: list[str] = []
        self.compiler_kib = 0
        reports = iter(workdir / f"rss-{n}" for n in itertools.count())
        real_emit, real_build, real_run = emit.emit_plans, build.build, build._run

        def timed_emit(*args, **kwargs):
            start = time.perf_counter()
            rendered = real_emit(*args, **kwargs)
            self.times["emit"] += time.perf_counter() - start
            self.units = len(rendered.units)
            return rendered

        def timed_build(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_build(*args, **kwargs)
            finally:
                self.times["build"] += time.perf_counter() - start

        def counted_run(argv, cwd):
            if "-c" in argv and argv[argv.index("-c") + 1] in build.model_sources(self.units):
                self.compiled.append(argv[argv.index("-c") + 1])
            report = next(reports)
            try:
                real_run(probed(argv, report), cwd)
            finally:
                if report.exists() and report.read_text().strip():
                    self.compiler_kib = max(self.compiler_kib, int(report.read_text()))

        emit.emit_plans, build.build, build._run = timed_emit, timed_build, counted_run


def one_compile(case: dict, target: str, cores: int, profile: Path | None) -> dict:
    """Compile one model in this process, uncached, on `cores` CPUs."""
    import sparsec

    _pin(cores)
    model = _model(case)
    shapes = {name: tuple(dims) for name, dims in case.get("shapes", {}).items()} or None
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="sparsec-compile-bench-") as tmp:
        phases = Phases(Path(tmp))
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        sparsec.compile_model(model, target, Path(tmp) / "model.so", use_cache=False,
                              host_profile=False, input_shapes=shapes, verify_each=False)
        total = time.perf_counter() - start
        if profiler:
            profiler.disable()
            profile.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(profile / f"{Path(case.get('path', case['shape'])).stem}-"
                                f"{case['nodes']}-{cores}cores.prof")
    return {"passes": total - phases.times["emit"] - phases.times["build"], **phases.times,
            "units": phases.units,
            "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_cc_mb": phases.compiler_kib / 1024}


def one_rebuild(case: dict, target: str, cores: int) -> dict:
    """Compile `case` with a fresh build cache, then again with its middle layer changed."""
    import sparsec

    _pin(cores)
    times = {}
    with tempfile.TemporaryDirectory(prefix="sparsec-rebuild-bench-") as tmp:
        phases = Phases(Path(tmp))
        for step, changes in (("first", {}), ("rebuild", {"scaled_layer": case["nodes"] // 6})):
            phases.times["build"], phases.compiled = 0.0, []
            start = time.perf_counter()
            sparsec.compile_model(_model(case, **changes), target, Path(tmp) / f"{step}.so",
                                  cache_dir=Path(tmp) / "cache", host_profile=False,
                                  verify_each=False)
            times[f"{step}_total"] = time.perf_counter() - start
            times[f"{step}_build"] = phases.times["build"]
            times[f"{step}_compiled"] = len(phases.compiled)
    return {**times, "units": phases.units}


def measure(case: dict, target: str, cores: int, repeat: int, profile: Path | None,
            mode: str = "compile") -> dict:
    runs = []
    for _ in range(repeat):  # a fresh process each: peak RSS and imports start from nothing
        argv = [sys.executable, __file__, "--one",
                json.dumps([mode, case, target, cores, str(profile or "")])]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{case} on {cores} cores failed:\n{result.stderr[-3000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def model_cases(args) -> list[dict]:
    cases = [{"shape": shape, "nodes": nodes} for shape in filter(None, args.shapes.split(","))
             for nodes in map(int, filter(None, args.nodes.split(",")))]
    for pattern in filter(None, args.models.split(",")):
        path = Path(pattern)
        found = [path] if path.exists() else sorted(path.parent.glob(path.name))
        if not found:
            print(f"skipped {pattern}: no such file (benchmarks/export_encoders.py writes the "
                  f"encoders into benchmarks/models/)", flush=True)
        cases += [encoder_case(path) for path in found]
    return cases


def _label(case: dict) -> str:
    return Path(case["path"]).stem if case["shape"] == "path" else case["shape"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1000,4000,20000")
    parser.add_argument("--shapes", default="chain,mlp")
    parser.add_argument("--cores", default="1,2", help="CPUs each compile may use")
    parser.add_argument("--models", default=",".join(str(MODELS / name) for name in ENCODERS),
                        help="real models by path, comma-separated (globs in the file name "
                             "allowed; '' for none)")
    parser.add_argument("--rebuild-nodes", default="300",
                        help="mlp sizes for the rebuild table ('' for none)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default="native")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each case here")
    parser.add_argument("--name", default="compile")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's case
    parser.add_argument("--describe", help=argparse.SUPPRESS)  # a real model's case
    args = parser.parse_args()
    if args.describe:
        print(json.dumps(describe(Path(args.describe))))
        return
    if args.one:
        mode, case, target, cores, profile = json.loads(args.one)
        result = (one_rebuild(case, target, cores) if mode == "rebuild"
                  else one_compile(case, target, cores, Path(profile) if profile else None))
        print(json.dumps(result))
        return
    usable = len(os.sched_getaffinity(0))
    cores = [n for n in map(int, args.cores.split(",")) if n <= usable]
    for n in sorted(set(map(int, args.cores.split(","))) - set(cores)):
        print(f"skipped {n} cores: this process may use {usable}", flush=True)
    rows = []
    for case in model_cases(args):
        for n in cores:
            r = measure(case, args.target, n, args.repeat, args.profile)
            total = r["passes"] + r["emit"] + r["build"]
            rows.append([_label(case), f"{case['nodes']:,}", n, int(r["units"]) or 1,
                         f"{r['passes']:.2f}", f"{r['emit']:.2f}", f"{r['build']:.2f}",
                         f"{total:.2f}", f"{total / case['nodes'] * 1e3:.2f}",
                         f"{r['rss_self_mb']:.0f}", f"{r['rss_cc_mb']:.0f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    path = write_table(
        args.name, f"Compile time against graph size (target {args.target}, no build cache)",
        ["model", "nodes", "cores", "C units", "passes s", "emit s", "C build s", "total s",
         "ms per node", "peak RSS MB", "peak cc RSS MB"], rows,
        f"Median of {args.repeat} compiles, each in a fresh process with use_cache=False and "
        "its CPU affinity cut to `cores` CPUs. chain: Relu nodes in a row on a 1x64 input; "
        "mlp: MatMul+Add+Relu layers with 64x64 weights, 80 % zeros (fused to one Dense "
        f"each); encoders at batch 1, sequence {SEQUENCE}, nodes counted in the ONNX file. "
        "`C units`: the translation units the model's C was split into (codegen/units.py; "
        "model.c besides them where more than 1). `passes`: ONNX import and every pass; "
        "`emit`: rendering the C; `C build`: the C compilers (in parallel on the cores) and "
        "the link; peak RSS: the compile's python process, and the largest C compiler "
        "process. The machine is shared with other work, so timings are noisy.")
    print(path)
    rebuild_rows = []
    for nodes in map(int, filter(None, args.rebuild_nodes.split(","))):
        for n in cores:
            r = measure({"shape": "mlp", "nodes": nodes}, args.target, n, args.repeat, None,
                        "rebuild")
            rebuild_rows.append([f"mlp {nodes:,}", n, int(r["units"]) or 1,
                                 f"{r['first_total']:.2f}", f"{r['first_build']:.2f}",
                                 f"{r['rebuild_total']:.2f}", f"{r['rebuild_build']:.2f}",
                                 int(r["rebuild_compiled"])])
            print(" | ".join(map(str, rebuild_rows[-1])), flush=True)
    if rebuild_rows:
        print(write_table(
            f"{args.name}-rebuild", f"Rebuild after one layer's weights change (target "
            f"{args.target}, build cache on)",
            ["model", "cores", "C units", "first total s", "first C build s",
             "rebuild total s", "rebuild C build s", "sources compiled on rebuild"],
            rebuild_rows,
            f"Median of {args.repeat} runs, each in a fresh process with a fresh build cache: "
            "the mlp compiled, then compiled again with its middle layer's weights doubled "
            "(the same zeros). The first build also compiles the runtime and the precompiled "
            "header into the cache. `sources compiled`: model.c (it holds the weights, never "
            "cached) and each unit whose text changed; the other units' objects come from the "
            "cache. The passes run again in full: only the C build is incremental."))


if __name__ == "__main__":
    main()
