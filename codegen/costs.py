"""The cost model: what the kernel table's rows cost on a target, as the passes price weights
(detect-sparsity, quantize), and whether a parallel kernel is worth the pool."""

from __future__ import annotations

from collections.abc import Mapping

# The table through its module, so that tests can withhold rows (monkeypatch table.KERNELS).
from sparsec.codegen import kernels as table
from sparsec.codegen.isa import BF16_ISAS
from sparsec.codegen.kernels import ISA_ORDER, KernelSpec
from sparsec.codegen.targets import Target
from sparsec.compiler.ir import SPARSE_PATTERNS, Graph, Node
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes import SparseKernelCost, StreamedWeights
from sparsec.compiler.passes.absorb_patches import dense_rows
from sparsec.compiler.patterns import DENSE_PATTERN, Pattern

# ns per output element of a fused activation computed by runtime_c/sparsec_vmath.h, by the
# vector width of the kernel's ISA: measured on the Sapphire Rapids-class VM, 4096 elements in
# L1, one thread (NEON estimated at twice AVX2's per element). Relu and Clip are a max/min in
# the store, which the kernel costs already hold. Unpriced, a GELU layer was predicted 5x too
# fast (`sparsec analyze --measure` on the tiny BERT) and could be refused the pool.
ACTIVATION_NS = {
    "Gelu": {1: 3.96, 4: 1.16, 8: 0.58, 16: 0.32},
    "GeluTanh": {1: 6.16, 4: 1.71, 8: 0.86, 16: 0.51},
    "Sigmoid": {1: 4.09, 4: 1.33, 8: 0.67, 16: 0.42},
    "Tanh": {1: 4.12, 4: 1.69, 8: 0.85, 16: 0.46},
}
ISA_LANES = {"scalar": 1, "neon": 4, "neondot": 4, "avx2": 8, "avxvnni": 8, "avx512f": 16,
             "avx512vnni": 16, "avx512bf16": 16, "amx": 16}


def activation_ns(node: Node, spec: KernelSpec, outputs: int) -> float:
    """What a Dense node's fused activation adds to its kernel's time over `outputs` elements
    (0 for none, Relu and Clip)."""
    per_element = ACTIVATION_NS.get(node.attrs.get("activation", ""))
    if per_element is None:
        return 0.0
    return outputs * per_element[ISA_LANES.get(spec.isa, 1)]


PARALLEL_MIN_NS = 30_000.0
"""A parallel kernel predicted to run shorter than this runs on the calling thread alone:
handing a region to the pool and waiting for it costs microseconds, and a worker spinning
beside serial work slowed the tiny BERT's 2-thread run to 0.7x of one thread."""


def predicted_ns(graph: Graph, node: Node, spec: KernelSpec, target: Target) -> float | None:
    """The cost model's time for a Dense node's kernel (None when it has no estimate)."""
    if node.op != DENSE or not spec.cost_ns:
        return None
    weight = graph.tensors[node.inputs[1]]
    rows = dense_rows(graph, node)
    info = weight.sparsity
    epilogue = activation_ns(node, spec, rows * weight.shape[-1])
    if info is None or spec.pattern == DENSE_PATTERN:
        return rows * weight.size * _cost(spec, target) + epilogue
    units, _fill = info.block_stats.get(info.pattern, (weight.size, 1.0))
    return rows * info.pattern.work_units(weight.size, units) * _cost(spec, target) + epilogue


def runs_parallel(graph: Graph, node: Node, spec: KernelSpec, target: Target,
                  minimum_ns: float = PARALLEL_MIN_NS) -> bool:
    predicted = predicted_ns(graph, node, spec, target)
    return spec.parallel and (predicted is None or predicted >= minimum_ns)


def _cost(spec: KernelSpec, target: Target) -> float:
    return spec.cost_ns.get(target.name, spec.cost_ns["generic"])


def _dense_rows(target: Target, pattern: str, weights: str) -> list[KernelSpec]:
    return [k for k in table.KERNELS if k.op == DENSE and k.pattern == pattern
            and k.weight_dtype == weights and k.isa in target.isas]


def _best_rows(target: Target, weights: str) -> dict[str, KernelSpec]:
    """Per weight pattern the target offers, the row it would use: its shiniest."""
    offered = {k.pattern for k in table.KERNELS if k.op == DENSE} - {"any", "runtime"}
    best = {}
    for pattern in sorted(offered, key=lambda p: (p not in SPARSE_PATTERNS, p)):
        rows = _dense_rows(target, pattern, weights)
        if rows:
            best[pattern] = max(rows, key=lambda k: ISA_ORDER.index(k.isa))
    return best


VALUE_BYTES = {"float32": 4, "int8": 1, "bfloat16": 2}

WIDENED_BF16_PACK_NS = 1.0
"""ns per activation element that a bf16 kernel on an ISA without bf16 arithmetic (AVX2,
isa.BF16_ISAS parts == 2) spends packing: rounding each token tile to bf16 and widening the
pairs back to floats. Read off MiniLM 4x1-90 on an AVX2-only Zen 3: its bf16 layers ran
0.06-0.19 ms above their per-pair cost (calibrated there), 1.0-1.2 ns per activation element,
and the model 12.4 ms against 10.9 in float32 while the cost model chose bf16 for every layer."""


def _packing_ns(row: KernelSpec | None, weights: str) -> float:
    if weights != "bfloat16" or row is None:
        return 0.0
    isa = BF16_ISAS.get(row.isa)
    return WIDENED_BF16_PACK_NS if isa is not None and isa.tile_parts == 2 else 0.0


def cost_model(target: Target, weights: str = "float32",
               measured: Mapping[tuple[str, str], float] | None = None) -> SparseKernelCost:
    """What the passes need to price a weight's storage on `target` with `weights` values:
    per element for dense and BITMASK rows, per nonzero block for block rows, and how the
    rows with compute-only estimates stream their weights. `measured`: a host profile's
    costs (codegen/profiles.py), which replace the table's for the patterns it has."""
    best = _best_rows(target, weights)
    measured = measured or {}

    def cost(pattern: str, row: KernelSpec) -> float:
        return measured.get((weights, pattern)) or _cost(row, target)

    best = {Pattern(p): k for p, k in best.items()}
    return SparseKernelCost(
        dense_per_element=cost(DENSE_PATTERN, best[DENSE_PATTERN]),
        per_block={p: cost(p, k) for p, k in best.items() if p.is_block},
        per_element={p: cost(p, k) for p, k in best.items() if p.is_bitmask},
        streamed={p: StreamedWeights(k.mr, k.stream) for p, k in best.items() if k.stream},
        value_bytes=VALUE_BYTES[weights],
        per_activation=_packing_ns(best.get(DENSE_PATTERN), weights),
        tile_rows=best[DENSE_PATTERN].mr,
        reads_feature_major=best[DENSE_PATTERN].reads_feature_major,
        writes_feature_major=best[DENSE_PATTERN].feature_major)


def sparse_costs(target: Target, weights: str = "float32") -> dict[str, float]:
    """ns per nonzero block and activation row, for each block pattern the target has."""
    return cost_model(target, weights).per_block
