"""`sparsec analyze`'s numbers: what a model's weights hold, how the compiler stores and runs
them, what the cost model predicts that costs and, on request, what it measures.

Everything here is computed from the compiled IR and the library's model info, the same records
`compile --report` prints, so the report cannot disagree with the library. The pictures and the
page are analyze_plots.py's and analyze_html.py's; this module returns plain data (JSON-ready)
plus the weights' density grids, which only the pictures need.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsec.compiler.ops import weight_view
from sparsec.compiler.patterns import block_nonzeros
from sparsec.errors import SparsecError

# A sparsity picture is at most this many cells on a side: BERT-base's 768 x 3072 weights
# become 96 x 96 cells of 8 x 32 weights, which still shows rows and columns pruned whole.
PICTURE_CELLS = 96
# Layers listed as worth pruning further.
PRUNE_CANDIDATES = 10
# --measure alternates the two builds in this many rounds, so that a drift in the machine's
# clock or load shows in both alike (as `sparsec benchmark --compare` does).
ROUNDS = 10


@dataclass
class Analysis:
    data: dict  # what --json prints
    # Per matrix layer index (into data["matrix_layers"]): density grids of the weight as
    # stored ("after") and, where reorder_blocks permuted it, as the model had it ("before").
    pictures: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """How --measure times: on `threads` threads, after `warmup` seconds of untimed runs,
    `seconds` of runs per build, alternating between the builds in rounds."""

    seconds: float = 2.0
    warmup: float = 0.5
    threads: int = 1
    inputs: tuple[str, ...] = ()  # NAME=FILE.npy
    seed: int = 0


# --- weights ----------------------------------------------------------------------------------

def fill_histogram(weight: np.ndarray, rows: int, cols: int) -> list[int]:
    """counts[i]: the R x C blocks holding exactly i + 1 nonzeros (all-zero blocks are not
    stored, so not counted). Their mean fill is detect_sparsity's fill for the pattern."""
    per_block = block_nonzeros(weight != 0, rows, cols)
    return np.bincount(per_block[per_block > 0].ravel(), minlength=rows * cols + 1)[1:].tolist()


def density_grid(weight: np.ndarray, cells: int = PICTURE_CELLS) -> np.ndarray:
    """The share of nonzeros in each cell of a grid at most `cells` on a side; a weight no
    larger than that is shown weight by weight."""
    k, n = weight.shape
    rows, cols = max(1, -(-k // cells)), max(1, -(-n // cells))
    counts = block_nonzeros(weight != 0, rows, cols).astype(np.float64)
    # tail cells cover fewer weights than the others
    heights = np.minimum(rows, k - rows * np.arange(counts.shape[0]))
    widths = np.minimum(cols, n - cols * np.arange(counts.shape[1]))
    return counts / np.outer(heights, widths)


class _CountingSink:
    """A weight blob that only counts what a kernel's params function stores in it."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[bytes] = set()

    def add(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        key = hashlib.sha256(data).digest()
        if key not in self._seen:  # the blob stores equal constants once
            self._seen.add(key)
            self.bytes += data.nbytes
        return 0


def stored_bytes(graph, node) -> int:
    """Bytes of the library's weight blob this node's kernel reads: the tables its params
    function packs (values, block indices, scales) plus the constants it takes as they are
    (a dense weight, the bias), measured by asking the kernel's own params function."""
    from sparsec.codegen.request import KernelRequest
    from sparsec.codegen.selection import chosen

    sink = _CountingSink()
    request = KernelRequest(graph, node, sink)
    chosen(node).params(request)
    constants = {name for name in request.args if graph.tensors[name].is_constant}
    return sink.bytes + sum(graph.tensors[name].nbytes for name in constants)


def _cost_dtype(graph, node) -> str:
    """Which of the target's cost models priced this layer's weight."""
    if graph.tensors[node.inputs[1]].dtype == "int8":
        return "int8"
    return "bfloat16" if node.attrs.get("precision") == "bf16" else "float32"


def _producers(graph) -> dict[int, object]:
    """reorder_blocks gives a chain's producer and consumer one shared record; the producer
    comes first in the graph's (topological) order."""
    first: dict[int, object] = {}
    for node in graph.nodes:
        record = node.attrs.get("reorder")
        if record is not None:
            first.setdefault(id(record), node)
    return first


def unpermuted(graph, node, producers: dict[int, object]) -> np.ndarray | None:
    """The weight in the model's own channel order, where reorder_blocks permuted it: the
    producer's columns and the consumer's rows were taken in `permutation` order."""
    record = node.attrs.get("reorder") or {}
    if "permutation" not in record:
        return None
    inverse = np.argsort(np.asarray(record["permutation"]))
    weight = graph.tensors[node.inputs[1]].data
    return weight[:, inverse] if producers[id(record)] is node else weight[inverse, :]


def matrix_layer(graph, node, layer: dict, cost_models: dict,
                 producers: dict[int, object]) -> tuple[dict, dict[str, np.ndarray]]:
    """One Dense layer's record and its pictures."""
    from sparsec.codegen import costs, selection
    from sparsec.compiler.passes.detect_sparsity import predicted_costs
    from sparsec.compiler.patterns import DENSE_PATTERN

    weight = graph.tensors[node.inputs[1]]
    data = weight.data
    k, n = weight.shape
    rows = graph.tensors[node.outputs[0]].size // n if n else 0
    nonzeros = int(np.count_nonzero(data))
    info = weight.sparsity
    record = {"node": layer["node"], "kernel": layer["kernel"], "shape": [k, n],
              "weight_dtype": weight.dtype, "rows": rows, "parameters": k * n,
              "nonzeros": nonzeros, "density": nonzeros / (k * n) if k * n else 1.0,
              "dense_flops": 2 * rows * k * n, "sparse_flops": 2 * rows * nonzeros,
              "dense_bytes": k * n * 4, "stored_bytes": stored_bytes(graph, node),
              "pattern": layer.get("pattern", "dense"), "reason": layer.get("reason", ""),
              "reorder": layer.get("reorder"), "portable": layer.get("portable"),
              "candidates": {}}
    if info is not None:
        cost = cost_models[_cost_dtype(graph, node)]
        # the fused activation costs every candidate the same: priced once, added to each
        epilogue = costs.activation_ns(node, selection.chosen(node), rows * n) / rows \
            if node.kernel and rows else 0.0
        predicted = {p: ns + epilogue
                     for p, ns in predicted_costs(data, info.block_stats, cost).items()}
        for pattern, (blocks, fill) in info.block_stats.items():
            candidate = {"nonzero_blocks": blocks, "fill": fill,
                         "predicted_ms": predicted[pattern] * rows / 1e6
                         if pattern in predicted else None}
            if pattern.is_block:
                candidate["fill_histogram"] = fill_histogram(data, *pattern.block)
            record["candidates"][pattern] = candidate
        record["predicted_ms"] = predicted[info.pattern] * rows / 1e6
        record["predicted_dense_ms"] = predicted[DENSE_PATTERN] * rows / 1e6
        record["costs"] = _cost_dtype(graph, node)
        units = info.block_stats.get(info.pattern, (k * n, 1.0))[0]
        record["executed_flops"] = 2 * rows * info.pattern.multiplied(k * n, units)
    pictures = {"after": density_grid(data)}
    before = unpermuted(graph, node, producers)
    if before is not None:
        pictures["before"] = density_grid(before)
    return record, pictures


# --- the model --------------------------------------------------------------------------------

def layer_nodes(graph, layers: list[dict]) -> list:
    """The IR node behind each layer of the model info: emit lists the nodes in order, leaving
    out those whose outputs are all empty."""
    nodes = [node for node in graph.nodes
             if not all(graph.tensors[out].size == 0 for out in node.outputs if out)]
    if len(nodes) != len(layers) or any(node.name != layer["node"]
                                        for node, layer in zip(nodes, layers)):
        raise SparsecError("the compiled IR and the library's layers disagree; this is a bug "
                           "in sparsec analyze")
    return nodes


def library_weight_bytes(library: Path) -> int | None:
    """The weight blob's size as linked into the library: x86-64 builds put it alone in
    .lrodata (templates/model.c.j2); other architectures share .rodata, so None."""
    from elftools.elf.elffile import ELFFile

    with library.open("rb") as file:
        section = ELFFile(file).get_section_by_name(".lrodata")
        return section.data_size - 1 if section is not None else None  # its closing NUL


def analyze(model, target: str = "native", *, workdir: Path, measure: Measure | None = None,
            compile_fn: Callable | None = None, progress: Callable[[str], None] | None = None,
            **options) -> Analysis:
    """Compile `model` into `workdir` (and, measuring, once more with every weight dense) and
    return the report's data. `options`: compile_model's keywords; `compile_fn`: compile_model
    or a wrapper of it (the CLI's prints warnings its way)."""
    from sparsec.codegen import costs, profiles, targets
    from sparsec.version import __version__

    if compile_fn is None:
        from sparsec.api import compile_model as compile_fn
    say = progress or (lambda message: None)
    resolved = targets.resolve(target)
    if measure is not None and (targets.execution_mode(resolved) != "native"
                                or targets.runs_emulated(resolved)):
        raise SparsecError(f"--measure runs the model, and target {resolved.name} does not run "
                           "natively on this host (`sparsec targets`)")
    say("compiling")
    result = compile_fn(model, resolved.name, workdir / "model.so",
                        profile=measure is not None, **options)
    graph, info = result.graph, result.info
    measured, _ = profiles.load(resolved) if options.get("host_profile", True) else ({}, None)
    cost_models = {dtype: costs.cost_model(resolved, dtype, measured)
                   for dtype in ("float32", "int8", "bfloat16")}
    say("reading the weights")
    nodes = layer_nodes(graph, info["layers"])
    producers = _producers(graph)
    analysis = Analysis({})
    matrix, layer_of = [], {}
    for index, (node, layer) in enumerate(zip(nodes, info["layers"])):
        if weight_view(graph, node) is None:
            continue
        record, pictures = matrix_layer(graph, node, layer, cost_models, producers)
        record["layer"] = index
        layer_of[index] = len(matrix)
        analysis.pictures[len(matrix)] = pictures
        matrix.append(record)
    timing = None
    if measure is not None:
        say("compiling the dense build")
        dense_options = dict(options, force_pattern="dense", reorder=False)
        dense = compile_fn(model, resolved.name, workdir / "dense.so", profile=True,
                           **dense_options)
        say("timing")
        timing = time_builds(result.library, dense.library, info, dense.info, measure)
        for record in matrix:
            record["measured_ms"] = timing["layers"][record["layer"]]["sparse_ms"]
            record["measured_dense_ms"] = timing["layers"][record["layer"]]["dense_ms"]
    analysis.data = {
        "model": str(model) if isinstance(model, (str, Path)) else "(ModelProto)",
        "target": info["target"], "sparsec_version": __version__,
        "host_profile": str(result.host_profile) if result.host_profile else None,
        "summary": summarize(matrix, graph, nodes, result.library, timing),
        "matrix_layers": matrix,
        "operators": by_operator(info["layers"], matrix, layer_of, timing),
        "prune_candidates": prune_candidates(matrix),
        "measurement": timing,
    }
    return analysis


def summarize(matrix: list[dict], graph, nodes: list, library: Path,
              timing: dict | None) -> dict:
    weight_names = {weight.name for node in nodes
                    if (weight := weight_view(graph, node)) is not None}
    read = {name for node in nodes for name in node.inputs if name}
    other = sum(graph.tensors[name].size for name in read - weight_names
                if graph.tensors[name].is_constant
                and np.dtype(graph.tensors[name].dtype).kind == "f")
    summed = {key: sum(layer.get(key) or 0 for layer in matrix)
              for key in ("parameters", "nonzeros", "dense_flops", "sparse_flops",
                          "executed_flops", "dense_bytes", "stored_bytes", "predicted_ms",
                          "predicted_dense_ms")}
    summary = dict(summed, matrix_layers=len(matrix), layers=len(nodes),
                   other_parameters=other,
                   density=summed["nonzeros"] / summed["parameters"]
                   if summed["parameters"] else 1.0,
                   library_weight_bytes=library_weight_bytes(library),
                   predicted_speedup=summed["predicted_dense_ms"] / summed["predicted_ms"]
                   if summed["predicted_ms"] else None)
    if timing is not None:
        summary.update(measured_ms=timing["sparse"]["p50"],
                       measured_dense_ms=timing["dense"]["p50"],
                       measured_speedup=timing["dense"]["p50"] / timing["sparse"]["p50"],
                       measured_matrix_ms=sum(layer["measured_ms"] for layer in matrix),
                       measured_matrix_dense_ms=sum(layer["measured_dense_ms"]
                                                    for layer in matrix))
        summary["measured_matrix_speedup"] = (
            summary["measured_matrix_dense_ms"] / summary["measured_matrix_ms"]
            if summary["measured_matrix_ms"] else None)
    return summary


def by_operator(layers: list[dict], matrix: list[dict], layer_of: dict[int, int],
                timing: dict | None) -> list[dict]:
    """Time per operator kind, slowest first: measured in both builds where there is a
    measurement, else the cost model's prediction, which prices matrix layers only."""
    kinds: dict[str, dict] = {}
    for index, layer in enumerate(layers):
        kind = kinds.setdefault(layer["op"], {"op": layer["op"], "layers": 0,
                                              "predicted_ms": None})
        kind["layers"] += 1
        if index in layer_of:
            predicted = matrix[layer_of[index]].get("predicted_ms")
            if predicted is not None:
                kind["predicted_ms"] = (kind["predicted_ms"] or 0.0) + predicted
        if timing is not None:
            times = timing["layers"][index]
            kind["measured_ms"] = kind.get("measured_ms", 0.0) + times["sparse_ms"]
            kind["measured_dense_ms"] = kind.get("measured_dense_ms", 0.0) + times["dense_ms"]
    key = "measured_ms" if timing is not None else "predicted_ms"
    return sorted(kinds.values(), key=lambda kind: -(kind.get(key) or 0.0))


def prune_candidates(matrix: list[dict], top: int = PRUNE_CANDIDATES) -> list[dict]:
    """The matrix layers that spend the most time per nonzero weight (measured where there is
    a measurement, else predicted): where pruning further is likeliest to pay."""
    ranked = []
    for layer in matrix:
        ms = layer.get("measured_ms", layer.get("predicted_ms"))
        if ms is None or not layer["nonzeros"]:
            continue
        ranked.append({"node": layer["node"], "pattern": layer["pattern"],
                       "density": layer["density"], "nonzeros": layer["nonzeros"], "ms": ms,
                       "measured": "measured_ms" in layer,
                       "ns_per_nonzero": ms * 1e6 / layer["nonzeros"]})
    return sorted(ranked, key=lambda layer: -layer["ns_per_nonzero"])[:top]


# --- measuring --------------------------------------------------------------------------------

def time_builds(sparse_library: Path, dense_library: Path, sparse_info: dict, dense_info: dict,
                measure: Measure) -> dict:
    """Both builds on the same inputs, alternating rounds (sparsec.benchmark.alternate), and
    each layer's time from the builds' own per-layer timers over exactly the timed runs."""
    from sparsec import benchmark, inputs
    from sparsec.module import load

    if [layer["node"] for layer in sparse_info["layers"]] != \
            [layer["node"] for layer in dense_info["layers"]]:
        raise SparsecError("the sparse and dense builds have different layers; this is a bug "
                           "in sparsec analyze")
    with load(sparse_library, threads=measure.threads) as sparse, \
            load(dense_library, threads=measure.threads) as dense:
        feeds = inputs.model_inputs(sparse.info["inputs"], list(measure.inputs), measure.seed,
                                    buckets=sparse.info.get("buckets"))
        runs = {"sparse": lambda: sparse.run(feeds), "dense": lambda: dense.run(feeds)}
        for run in runs.values():
            benchmark.warm_up(run, measure.warmup)
        before = {"sparse": sparse.profile(), "dense": dense.profile()}
        # benchmark.alternate's rounds, without its own warm-up run: the layer timers then
        # count exactly the runs whose latencies are kept
        timings = {name: benchmark.Timings() for name in runs}
        began = time.perf_counter()
        budget = benchmark.Budget(measure.seconds)
        for index in range(ROUNDS):
            for name, run in runs.items():
                timings[name].time(run, budget.round(index, ROUNDS))
        wall = time.perf_counter() - began
        after = {"sparse": sparse.profile(), "dense": dense.profile()}
        threads = sparse.threads
    per_layer = []
    for index, layer in enumerate(sparse_info["layers"]):
        times = {f"{name}_ms": (after[name][index]["ms"] - before[name][index]["ms"])
                 / len(timings[name].latencies) for name in ("sparse", "dense")}
        per_layer.append({"node": layer["node"], "op": layer["op"], **times})
    return {"threads": threads, "seconds": wall, "warmup_seconds": measure.warmup,
            "runs": {name: len(timings[name].latencies) for name in timings},
            "sparse": benchmark.latency_stats(timings["sparse"].latencies),
            "dense": benchmark.latency_stats(timings["dense"].latencies),
            "layers": per_layer,
            "how": ("the model compiled twice, as the compiler chose (sparse) and with every "
                    "weight stored dense (--pattern dense, no reordering), both with per-layer "
                    "timers (--profile, about 50 ns a layer); the same inputs, after "
                    f"{measure.warmup:g} s of untimed runs each, in {ROUNDS} alternating rounds of "
                    f"{measure.seconds:g} s per build in all, on {threads} thread(s). Whole-run "
                    "latencies are the median of the timed runs; layer times are the "
                    "builds' own timers averaged over exactly those runs.")}
