"""The pass pipeline: one ordered list, read top to bottom.

Each pass is a module with `NAME` and `run(graph, ctx) -> Graph`; options travel in `PassContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.limits import DEFAULT_MAX_MEMORY
from sparsec.compiler.passes import (
    choose_layouts,
    detect_sparsity,
    fold_constants,
    fuse,
    plan_memory,
    quantize,
    reorder_blocks,
)
from sparsec.compiler.verify import verify


@dataclass(frozen=True)
class SparseKernelCost:
    """What the target's kernels cost per row of activations, in nanoseconds measured by
    benchmarks/kernels.py: the dense kernel per weight element, a block kernel per nonzero
    block. The numbers come from the codegen kernel table, so this pass stays independent of
    codegen.
    """

    dense_per_element: float
    per_block: dict[str, float]  # pattern -> time per nonzero block
    # Stored forms priced per weight element, like dense, that keep only the nonzeros in
    # memory (BITMASK): form -> time per weight element.
    per_element: dict[str, float] = field(default_factory=dict)
    # Forms whose time above is compute alone (estimates for a machine not at hand): each
    # walks its weights once per `rows_per_pass` activation rows, and a row's time is the
    # larger of its compute and its share of streaming the stored weights (see WeightStream).
    streamed: dict[str, StreamedWeights] = field(default_factory=dict)
    value_bytes: int = 4  # bytes per stored weight value (int8 1, bf16 2, float32 4)


@dataclass(frozen=True)
class WeightStream:
    """Where a kernel's weights come from on each walk: from the core's cache while they fit
    in `cache_bytes`, else from beyond it (L3 or DRAM), at the bandwidths given."""

    cache_bytes: int
    cached_bytes_per_ns: float
    memory_bytes_per_ns: float

    def ns_per_walk(self, stored_bytes: float) -> float:
        rate = (self.cached_bytes_per_ns if stored_bytes <= self.cache_bytes
                else self.memory_bytes_per_ns)
        return stored_bytes / rate


@dataclass(frozen=True)
class StreamedWeights:
    rows_per_pass: int  # activation rows the kernel computes per walk over the weights
    stream: WeightStream


@dataclass(frozen=True)
class LayoutSupport:
    """Which activation layouts a node's kernel handles besides row-major (codegen knows)."""

    reads_feature_major: bool = False  # its activations (input 0) stored K x rows
    writes_feature_major: bool = False  # its output stored N x rows


@dataclass
class PassContext:
    cost: SparseKernelCost
    verify_each: bool = False
    force_pattern: str | None = None  # "dense" or a block pattern for every weight
    quantize: str | None = None  # "dynamic": int8 weights, activations quantized at run time;
    # "bf16": bf16 products summed in fp32
    reorder: bool = True  # reorder_blocks may permute channels between Dense layers
    int8_cost: SparseKernelCost | None = None  # the target's int8 kernels, for quantize
    bf16_cost: SparseKernelCost | None = None  # the target's bf16 kernels, for quantize
    # Bytes of arena scratch a node's kernel needs while it runs (from codegen's kernel
    # table, so this package stays independent of codegen); None: no kernel needs any.
    scratch_bytes: Callable[[Graph, Node], int] | None = None
    # The layouts a node's kernel on the target can read and write (codegen's kernel table);
    # None: row-major everywhere.
    layouts: Callable[[Graph, Node], LayoutSupport] | None = None
    dump_dir: Path | None = None
    # Bytes the compiled model (weights and arena) and any folded constant may take.
    max_memory: int = DEFAULT_MAX_MEMORY
    log: list[str] = field(default_factory=list)


PIPELINE: list[tuple[str, Callable[[Graph, PassContext], Graph], str]] = [
    (fold_constants.NAME, fold_constants.run,
     "evaluate shape arithmetic and constant subgraphs so kernels see only run-time work"),
    (detect_sparsity.NAME, detect_sparsity.run,
     "measure every weight and pick its block pattern (or dense) by the target's cost"),
    (fuse.NAME, fuse.run,
     "fold bias and activation into the matrix kernels' epilogues"),
    (reorder_blocks.NAME, reorder_blocks.run,
     "permute channels between layers so nonzeros fill whole blocks, folded into the weights"),
    (quantize.NAME, quantize.run,
     "on request, int8 weights per output channel for the VNNI kernels"),
    (choose_layouts.NAME, choose_layouts.run,
     "hand activations between token-tile kernels over transposed, skipping two transposes"),
    (plan_memory.NAME, plan_memory.run,
     "place every intermediate in one arena, sized at compile time"),
]


def run_pipeline(graph: Graph, ctx: PassContext) -> Graph:
    _dump(graph, ctx, 0, "import")
    if ctx.verify_each:
        verify(graph, "import")
    for index, (name, run, _why) in enumerate(PIPELINE, start=1):
        graph = run(graph, ctx)
        _dump(graph, ctx, index, name)
        if ctx.verify_each:
            verify(graph, name)
    return graph


def _dump(graph: Graph, ctx: PassContext, index: int, name: str) -> None:
    if ctx.dump_dir is None:
        return
    ctx.dump_dir.mkdir(parents=True, exist_ok=True)
    (ctx.dump_dir / f"{index:02d}-{name}.txt").write_text(graph.to_text(), encoding="utf-8")
