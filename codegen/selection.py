"""Kernel selection: which row of the kernel table runs a node on a target.

The select-kernels pass calls `choose` once per node and records the keys; everything after
it reads them back through `chosen` (the node's row) and never selects again.
"""

from __future__ import annotations

# The table through its module, so that tests can withhold rows (monkeypatch table.KERNELS).
from sparsec.codegen import kernels as table
from sparsec.codegen.kernels import ISA_ORDER, KernelSpec, by_key
from sparsec.codegen.targets import TARGETS, Dispatch, Target
from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node
from sparsec.compiler.ops import ATTENTION, DENSE, weight_view
from sparsec.compiler.passes import KernelChoice, LayoutSupport
from sparsec.errors import KernelNotFoundError


def weight_dtype(graph: Graph, node: Node) -> str:
    """The weights a Dense node's kernel multiplies: its weight tensor's dtype, or bfloat16
    where the quantize pass marked the node (`--dtype bf16`: the tensor stays float32 and the
    kernel's parameters round it)."""
    if node.op != DENSE:
        return "float32"
    if node.attrs.get("precision") == "bf16":
        return "bfloat16"
    return graph.tensors[node.inputs[1]].dtype


def node_dtype(graph: Graph, node: Node) -> str:
    names = [n for n in node.inputs if n] or node.outputs
    return graph.tensors[names[0]].dtype


def candidates(node: Node, pattern: str, dtype: str, weights: str) -> list[KernelSpec]:
    return [k for k in table.KERNELS if k.op == node.op and dtype in k.dtypes
            and k.pattern in ("any", pattern) and k.weight_dtype == weights]


def select(graph: Graph, node: Node, target: Target) -> KernelSpec:
    """The row for `node` with the shiniest ISA the target has; an error lists what was tried."""
    dtype = node_dtype(graph, node)
    pattern = weight_pattern(graph, node)
    weights = weight_dtype(graph, node)
    fitting = [k for k in candidates(node, pattern, dtype, weights) if k.isa in target.isas]
    if fitting:
        return max(fitting, key=lambda k: ISA_ORDER.index(k.isa))
    op = node.attrs.get("source_op", node.op)  # the ONNX op the user wrote, not fuse's Dense
    dtypes = sorted({d for k in table.KERNELS if k.op == node.op for d in k.dtypes})
    if dtype not in dtypes:
        raise KernelNotFoundError(f"node {node.name!r} (op {op}) works on {dtype}; sparsec runs "
                                  f"{op} on {', '.join(dtypes) or 'no dtype'} only")
    tried = [k.symbol for k in table.KERNELS if k.op == node.op] or ["no kernel for this op"]
    raise KernelNotFoundError(
        f"no kernel for node {node.name!r} (op {op}, dtype {dtype}, {weights} weights "
        f"{pattern}) on "
        f"target {target.name}; tried: {', '.join(tried)}")


def dispatched(graph: Graph, node: Node, target: Target,
               base: KernelSpec) -> list[tuple[Dispatch, KernelSpec]]:
    """The kernels the library also carries for `node` (whose own kernel is `base`), each
    called instead of `base` where the CPU has its feature; the first that fits wins. They
    take `base`'s arguments: same parallelism, scratch pointer and layouts."""
    rows = candidates(node, weight_pattern(graph, node), node_dtype(graph, node),
                      weight_dtype(graph, node))
    result = []
    for option in target.dispatch:
        fitting = [k for k in rows if k.isa == option.isa and k.parallel == base.parallel
                   and bool(k.scratch) == bool(base.scratch)
                   and k.feature_major == base.feature_major
                   and k.reads_feature_major == base.reads_feature_major
                   and k.reads_patches == base.reads_patches
                   and k.adds_residual == base.adds_residual]
        if fitting and ISA_ORDER.index(option.isa) > ISA_ORDER.index(base.isa):
            result.append((option, fitting[0]))
    return result


def choose(graph: Graph, node: Node, target: Target) -> KernelChoice:
    """The select_kernels pass's decision for `node` on `target`: its row and the rows the
    library dispatches to by CPU feature, as keys."""
    spec = select(graph, node, target)
    return KernelChoice(spec.symbol, tuple((option.feature, other.symbol)
                                           for option, other in dispatched(graph, node,
                                                                           target, spec)))


def chosen(node: Node) -> KernelSpec:
    """The row select_kernels recorded for `node`."""
    if not node.kernel:
        raise KernelNotFoundError(f"node {node.name!r} (op {node.op}) has no kernel: the "
                                  "select-kernels pass has not run")
    return by_key(node.kernel)


def scratch_bytes(graph: Graph, node: Node) -> int:
    """Arena scratch the node's chosen kernels need while they run (plan_memory asks): the
    most that its own kernel or any dispatched one needs."""
    specs = [chosen(node)] + [by_key(key) for _, key in node.dispatch]
    return max(k.scratch(graph, node) if k.scratch else 0 for k in specs)


def layout_support(graph: Graph, node: Node) -> LayoutSupport:
    """What choose_layouts may ask of the node's chosen kernel."""
    spec = chosen(node)
    specs = [spec, *(by_key(key) for _, key in node.dispatch)]
    writes = spec.feature_major and all(k.feature_major_if is None
                                        or k.feature_major_if(graph, node) for k in specs)
    # A row whose feature-major form is conditional (the dense GEMMs) reads patches in that
    # form alone: where choose_layouts left the output row-major, its panel form runs.
    written = graph.tensors[node.outputs[0]].layout == FEATURE_MAJOR
    patches = all(k.reads_patches and (k.feature_major_if is None or written) for k in specs)
    return LayoutSupport(spec.feature_major or spec.reads_feature_major, writes, patches,
                         all(k.adds_residual for k in specs))


def weight_pattern(graph: Graph, node: Node) -> str:
    if node.op != DENSE:
        return "any"
    weight = weight_view(graph, node)
    if weight is None or weight.sparsity is None:
        return "runtime"  # a product of two activations (Gemm with a run-time B)
    return weight.sparsity.pattern


# Matrix products: where one of these runs portable C on a SIMD target, compile says so.
MATRIX_OPS = (DENSE, ATTENTION, "MatMul", "MatMulInteger")
ISA_NAMES = {"neon": "NEON", "neondot": "NEON dot-product", "avx2": "AVX2",
             "avxvnni": "AVX-VNNI", "avx512f": "AVX-512", "avx512vnni": "AVX-512 VNNI",
             "avx512bf16": "AVX-512 BF16", "amx": "AMX"}


def portable_reason(graph: Graph, node: Node, spec: KernelSpec, target: Target) -> str | None:
    """Why a matrix product runs a portable-C row on a SIMD target, e.g. "int8 Dense runs
    portable C on x86-avx2: no AVX2 int8 kernel for pattern 4x4"; None where it does not."""
    simd = [isa for isa in target.isas if isa != "scalar"]
    if spec.isa != "scalar" or not simd or node.op not in MATRIX_OPS:
        return None
    if node.op == ATTENTION and target.vector_bytes <= 16:
        return None  # its GCC vectors of 4 floats are the whole NEON register
    dtype, weights = node_dtype(graph, node), weight_dtype(graph, node)
    kind = {"int8": "int8 ", "bfloat16": "bf16 "}.get(weights, "") + node.op
    isas = " or ".join(ISA_NAMES[isa] for isa in reversed(simd))
    rows = [k for k in table.KERNELS if k.op == node.op and dtype in k.dtypes
            and k.weight_dtype == weights and k.isa != "scalar"]
    here = sorted({k.pattern for k in rows if k.isa in simd})
    pattern = weight_pattern(graph, node)
    if pattern == "runtime":
        why = f"no {isas} kernel for a product of two run-time operands"
    elif here:
        why = (f"no {isas} {kind} kernel for pattern {pattern} (they take: "
               f"{', '.join(here)}; the pattern is the cost model's or --pattern's choice)")
    else:
        elsewhere = [t.name for t in TARGETS.values()
                     if any(k.isa in t.isas for k in rows)]
        why = f"no {isas} kernel for {kind}" + (
            f" (targets with one: {', '.join(elsewhere)})" if elsewhere else "")
    return f"{kind} runs portable C on {target.name}: {why}"
