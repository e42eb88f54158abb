"""The pass pipeline: one ordered list, read top to bottom.

Each pass is a module with `NAME` and `run(graph, ctx) -> Graph`; options travel in `PassContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.options import CompileOptions
from sparsec.compiler.passes import (
    absorb_patches,
    absorb_residual,
    choose_layouts,
    detect_sparsity,
    fold_constants,
    fuse,
    lower_conv,
    plan_memory,
    quantize,
    reorder_blocks,
    select_kernels,
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
    # Time per activation element (row x K) spent outside the products whatever the
    # weights' density: the bf16 tiles widened to floats as they are packed, on ISAs without
    # bf16 arithmetic. A per-block cost cannot carry it: at 90 % sparsity it is most of
    # the difference between the lowered kernel and the float32 one.
    per_activation: float = 0.0
    # Activation rows the dense row computes at once (a token tile; 1 for row kernels): a
    # layer of fewer rows pays for the whole tile.
    tile_rows: int = 1
    # Whether the dense row can read and write feature-major activations, and so take and
    # hand on a conv's channels-first data with no transpose.
    reads_feature_major: bool = True
    writes_feature_major: bool = True


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
    # Reads a conv's patches from its input itself, or its stride's phases (absorb_patches).
    reads_patches: bool = False
    # Adds a residual (input 3) to its feature-major output (absorb_residual).
    adds_residual: bool = False


@dataclass
class PassContext:
    """What the passes know besides the graph: the user's options, and what the target's
    kernels cost and can do (from the codegen kernel table, handed in as values and functions
    so this package stays independent of codegen)."""

    cost: SparseKernelCost
    options: CompileOptions = CompileOptions()
    int8_cost: SparseKernelCost | None = None  # the target's int8 kernels, for quantize
    bf16_cost: SparseKernelCost | None = None  # the target's bf16 kernels, for quantize
    # The kernel for a node on the target: (its key, the keys of the kernels the library also
    # carries and dispatches to by CPU feature). Raises KernelNotFoundError. None: no
    # kernels are chosen (pass tests that stop short of code generation).
    select_kernel: Callable[[Graph, Node], KernelChoice] | None = None
    # Bytes of arena scratch a node's chosen kernels need while they run; None: none do.
    scratch_bytes: Callable[[Graph, Node], int] | None = None
    # The layouts a node's chosen kernel can read and write; None: row-major everywhere.
    layouts: Callable[[Graph, Node], LayoutSupport] | None = None
    target: str = ""  # the target's name, for messages
    log: list[str] = field(default_factory=list)
    # Told each pass's name as it starts (compile progress); None: nobody is listening.
    on_pass: Callable[[str], None] | None = None


@dataclass(frozen=True)
class KernelChoice:
    kernel: str  # the kernel table row's key
    dispatch: tuple[tuple[str, str], ...] = ()  # (CPU feature, kernel key), first fit wins


PIPELINE: list[tuple[str, Callable[[Graph, PassContext], Graph], str]] = [
    (fold_constants.NAME, fold_constants.run,
     "evaluate shape arithmetic and constant subgraphs so kernels see only run-time work"),
    (lower_conv.NAME, lower_conv.run,
     "rewrite each Conv as patches times a weight matrix (Dense), or a depthwise kernel"),
    (detect_sparsity.NAME, detect_sparsity.run,
     "measure every weight and pick its block pattern (or dense) by the target's cost"),
    (fuse.NAME, fuse.run,
     "fold bias and activation into the matrix kernels' epilogues"),
    (reorder_blocks.NAME, reorder_blocks.run,
     "permute channels between layers so nonzeros fill whole blocks, folded into the weights"),
    (quantize.NAME, quantize.run,
     "on request, int8 weights per output channel for the VNNI kernels"),
    (select_kernels.NAME, select_kernels.run,
     "choose every node's kernel on the target once, recorded on the node for what follows"),
    (choose_layouts.NAME, choose_layouts.run,
     "hand activations between token-tile kernels over transposed, skipping two transposes"),
    (absorb_patches.NAME, absorb_patches.run,
     "let token-tile kernels read a conv's patches from its input (or its stride's phases)"),
    (absorb_residual.NAME, absorb_residual.run,
     "add a conv's residual connection and the activation after it in its Dense's epilogue"),
    (plan_memory.NAME, plan_memory.run,
     "place every intermediate in one arena, sized at compile time"),
]


def run_pipeline(graph: Graph, ctx: PassContext) -> Graph:
    _dump(graph, ctx, 0, "import")
    if ctx.options.verify_each:
        verify(graph, "import")
    for index, (name, run, _why) in enumerate(PIPELINE, start=1):
        if ctx.on_pass is not None:
            ctx.on_pass(name)
        graph = run(graph, ctx)
        _dump(graph, ctx, index, name)
        if ctx.options.verify_each:
            verify(graph, name)
    return graph


def _dump(graph: Graph, ctx: PassContext, index: int, name: str) -> None:
    if ctx.options.dump_ir is None:
        return
    ctx.options.dump_ir.mkdir(parents=True, exist_ok=True)
    (ctx.options.dump_ir / f"{index:02d}-{name}.txt").write_text(graph.to_text(), encoding="utf-8")
