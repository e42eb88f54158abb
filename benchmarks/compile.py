"""Compile time and peak memory against graph size: is compiling linear in the node count?

    python benchmarks/compile.py [--nodes 1000,4000,20000] [--shapes chain,mlp] [--repeat 3]
        [--target native] [--profile DIR] [--name compile]

Models, generated and seeded: `chain`, N Relu nodes in a row on a 1x64 input (the shape of
graph an exporter's decompositions give); `mlp`, N/2 Dense layers (MatMul + Add, 64x64 weights,
80 % zeros) with a Relu between, so the weights, sparsity detection and the matrix kernels
grow with N too. Each compile runs in a fresh process with the build cache off (use_cache=False,
the CLI's --no-cache), and is split into its phases: import and the passes (python), rendering
the C (emit), and the C compiler and link (build). Peak RSS is the compile process's own
(ru_maxrss of self) and the largest C compiler's (of its children). Each cell is the median of
--repeat runs. --profile DIR also writes a cProfile of each case's python phases there.
Writes benchmarks/results/NAME.md.

The machine the table was made on is shared with other work: its timings are noisy, which the
medians only soften.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
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


def chain_model(nodes: int) -> onnx.ModelProto:
    names = ["x"] + [f"r{i}" for i in range(nodes - 1)] + ["y"]
    graph = helper.make_graph(
        [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}")
         for i in range(nodes)],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model(nodes: int, density: float = 0.2) -> onnx.ModelProto:
    """nodes // 3 layers of MatMul, Add, Relu (fuse folds each into one Dense)."""
    rng = np.random.default_rng(0)
    layers, initializers, current = [], [], "x"
    for i in range(max(1, nodes // 3)):
        weight = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
        weight *= rng.random((WIDTH, WIDTH)) < density
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


SHAPES = {"chain": chain_model, "mlp": mlp_model}


def one_compile(shape: str, nodes: int, target: str, profile: Path | None) -> dict:
    """Compile one model in this process, phase by phase, as api.compile_model does."""
    from sparsec.codegen import build as builder
    from sparsec.codegen import costs, emit, selection, targets
    from sparsec.compiler import frontend
    from sparsec.compiler.options import CompileOptions
    from sparsec.compiler.passes import PassContext, run_pipeline
    from sparsec.version import __version__

    model = SHAPES[shape](nodes)
    resolved = targets.resolve(target)
    options = CompileOptions(use_cache=False, host_profile=False)
    ctx = PassContext(cost=costs.cost_model(resolved, "float32", {}), options=options,
                      int8_cost=costs.cost_model(resolved, "int8", {}),
                      bf16_cost=costs.cost_model(resolved, "bfloat16", {}),
                      select_kernel=lambda g, n: selection.choose(g, n, resolved),
                      scratch_bytes=selection.scratch_bytes,
                      layouts=selection.layout_support, target=resolved.name)
    profiler = cProfile.Profile() if profile else None
    times = {}
    with tempfile.TemporaryDirectory(prefix="sparsec-compile-bench-") as tmp:
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        graph = run_pipeline(frontend.import_model(model, None, options.max_memory), ctx)
        times["passes"] = time.perf_counter() - start
        start = time.perf_counter()
        rendered = emit.emit_plans([graph], resolved, __version__)
        times["emit"] = time.perf_counter() - start
        if profiler:
            profiler.disable()
            profile.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(profile / f"{shape}-{nodes}.prof")
        start = time.perf_counter()
        builder.build(rendered, resolved, Path(tmp) / "model.so", use_cache=False)
        times["build"] = time.perf_counter() - start
    times["rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times["rss_cc_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return times


def measure(shape: str, nodes: int, target: str, repeat: int,
            profile: Path | None) -> dict:
    runs = []
    for _ in range(repeat):  # a fresh process each: peak RSS and imports start from nothing
        argv = [sys.executable, __file__, "--one", json.dumps([shape, nodes, target,
                                                               str(profile or "")])]
        result = subprocess.run(argv, capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1000,4000,20000")
    parser.add_argument("--shapes", default="chain,mlp")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default="native")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each case here")
    parser.add_argument("--name", default="compile")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's case
    args = parser.parse_args()
    if args.one:
        shape, nodes, target, profile = json.loads(args.one)
        print(json.dumps(one_compile(shape, nodes, target, Path(profile) if profile
                                     else None)))
        return
    rows = []
    for shape in args.shapes.split(","):
        for nodes in map(int, args.nodes.split(",")):
            r = measure(shape, nodes, args.target, args.repeat, args.profile)
            total = r["passes"] + r["emit"] + r["build"]
            rows.append([shape, f"{nodes:,}", f"{r['passes']:.2f}", f"{r['emit']:.2f}",
                         f"{r['build']:.2f}", f"{total:.2f}", f"{total / nodes * 1e3:.2f}",
                         f"{r['rss_self_mb']:.0f}", f"{r['rss_cc_mb']:.0f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    path = write_table(
        args.name, f"Compile time against graph size (target {args.target}, no build cache)",
        ["model", "nodes", "passes s", "emit s", "C build s",
         "total s", "ms per node", "peak RSS MB", "peak cc RSS MB"], rows,
        f"Median of {args.repeat} compiles, each in a fresh process with use_cache=False. "
        "chain: Relu nodes in a row on a 1x64 input; mlp: MatMul+Add+Relu layers with 64x64 "
        "weights, 80 % zeros (fused to one Dense each). `passes`: ONNX import and every pass; "
        "`emit`: rendering the C; `C build`: the C compiler and the link; peak RSS: the "
        "compile's python process, and the largest C compiler process. The machine is shared "
        "with other work, so timings are noisy.")
    print(path)


if __name__ == "__main__":
    main()
