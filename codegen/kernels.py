"""The kernel table: every kernel sparsec can emit, one `KernelSpec` row each, found by its key.

Selection (`selection.py`), the cost model (`costs.py`), kernel tests and benchmarks all read
`KERNELS`. A row names its operation, dtypes,
sparsity pattern and ISA, its template, and the function that computes the template's
parameters for one node (shapes, strides, weight offsets: all compile-time constants).
Adding an ISA or a pattern is adding rows. Every operation has a portable `scalar` row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sparsec.codegen import attention_params as atp
from sparsec.codegen import bf16_params as bp
from sparsec.codegen import cnn_params as cnnp
from sparsec.codegen import conv_params as cp
from sparsec.codegen import elementwise_params as ewp
from sparsec.codegen import gemm_params as gp
from sparsec.codegen import index_params as ip
from sparsec.codegen import int8_params as qp
from sparsec.codegen import norm_params as nrp
from sparsec.codegen import packing as pk
from sparsec.codegen import pool_params as pp
from sparsec.codegen import quantize_params as qlp
from sparsec.codegen import shape_params as shp
from sparsec.codegen import spmm_params as smp
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import SPARSE_PATTERNS, Graph, Node
from sparsec.compiler.ops import (
    ADD_LAYER_NORM,
    ATTENTION,
    COMPARISONS,
    COPY_OPS,
    DENSE,
    DEPTHWISE_CONV,
    ELEMENTWISE_BINARY,
    ELEMENTWISE_UNARY,
    FLOAT_ONLY,
    IM2COL,
    LOGICAL_BINARY,
    PARAMETRIC_ACTIVATIONS,
)
from sparsec.compiler.passes import (
    WeightStream,
)
from sparsec.compiler.patterns import BITMASK, Pattern
from sparsec.errors import KernelNotFoundError

FLOAT = ("float32",)
INTEGER = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOATS = ("float32", "float64")
NUMERIC = FLOATS + INTEGER
SIGNED = FLOATS + ("int8", "int16", "int32", "int64")
ANY = NUMERIC + ("bool",)

# Within a target, oldest to shiniest.
ISA_ORDER = ("scalar", "neon", "neondot", "avx2", "avxvnni", "avx512f", "avx512vnni",
             "avx512bf16", "amx")


@dataclass(frozen=True)
class KernelSpec:
    op: str
    dtypes: tuple[str, ...]
    isa: str
    template: str
    params: Callable[[KernelRequest], dict]
    pattern: str = "any"  # "dense", a block pattern from SPARSE_PATTERNS, or "any"
    mr: int = 1  # rows of activations per register tile
    nr: int = 1  # outputs per register tile
    # Measured ns per activation row and unit of work (a weight element for dense rows, a
    # nonzero block for sparse rows) by target name; "generic" stands in for targets not
    # listed. Filled from `python benchmarks/kernels.py --calibrate`. Only Dense rows need it.
    cost_ns: Mapping[str, float] = field(default_factory=dict)
    # cost_ns is an estimate of compute alone: selection adds the time to stream the stored
    # weights from here once per `mr` activation rows (measured costs include it already).
    stream: WeightStream | None = None
    # Bytes of arena scratch the kernel needs for a node; the pointer is its last argument.
    scratch: Callable[[Graph, Node], int] | None = None
    parallel: bool = False  # the kernel splits its work over the run context's threads
    weight_dtype: str = "float32"  # Dense rows: the constant weight's dtype (int8: quantized)
    # Reads its activations and writes its output feature-major (K x rows) as well as
    # row-major; its params function looks at the tensors' layouts.
    feature_major: bool = False
    # Reads its activations feature-major too, through A's strides, but writes row-major.
    reads_feature_major: bool = False
    # Writes feature-major only where this says so for a node (None: wherever asked).
    feature_major_if: Callable[[Graph, Node], bool] | None = None
    # Reads a conv's patches from its input or its stride's phases (masked shifted rows).
    reads_patches: bool = False
    # Adds a residual tensor (input 3) to its feature-major output before the activation.
    adds_residual: bool = False

    family: str = ""  # symbol stem: "f32_spmm" -> sparsec_f32_spmm_ukernel_...

    @property
    def symbol(self) -> str:
        pattern = {"any": "", "dense": "", "runtime": "_rt", "1x1": "_u",
                   BITMASK: "_bitmask"}.get(self.pattern, f"_b{self.pattern}")
        return f"sparsec_{self.family}_ukernel_{self.mr}x{self.nr}{pattern}__{self.isa}"


# Sapphire Rapids, one core, for the AMX rows: 2 MiB of L2 read at about 32 bytes a cycle at
# 3 GHz (100 bytes/ns); beyond it (L3, DRAM) 14 GB/s, what a bf16 768 x 3072 layer's dense
# AMX kernel streamed on the Sapphire Rapids-class VM (1.31 ms for 128 rows, 4.5 MiB walked
# every 32 rows; the published figure of about 20 GB/s predicted it 30 % fast).
SAPPHIRE_RAPIDS_STREAM = WeightStream(cache_bytes=2 << 20, cached_bytes_per_ns=100.0,
                                      memory_bytes_per_ns=14.0)


# Measured by `python benchmarks/kernels.py --calibrate` (ns per activation row and weight
# element, or per nonzero block) on the 2-core AMD EPYC (Zen 5) development machine.
SCALAR_GEMM_COST_NS = {"generic": 0.073, "x86-avx2": 0.041, "x86-avx512": 0.029}
SCALAR_SPMM_COST_NS = {
    "1x1": {"generic": 0.36, "x86-avx2": 0.37, "x86-avx512": 0.36},
    "4x1": {"generic": 0.60, "x86-avx2": 0.50, "x86-avx512": 0.55},
    "1x4": {"generic": 0.55, "x86-avx2": 0.49, "x86-avx512": 0.49},
    "1x16": {"generic": 1.38, "x86-avx2": 0.82, "x86-avx512": 1.07},
    "16x1": {"generic": 3.77, "x86-avx2": 3.44, "x86-avx512": 3.20},
    "4x4": {"generic": 0.99, "x86-avx2": 0.92, "x86-avx512": 0.92},
}

# int8 on AVX2 without VNNI (dense, 4x1): VPMADDWD on 16-bit codes, two per VNNI step. No
# AVX2-only host here: measured with the x86-avx2 build on the Sapphire Rapids-class host
# (MiniLM-L6's Dense layers at 128 tokens, min of 5 alternating rounds in one process, int8
# over fp32 of the same model): dense 24.1 / 35.8 ms, 4x1-90 % 5.86 / 7.70 ms. The costs are
# the fp32 AVX2 rows' (GEMM, 4x1 token tiles) times those ratios, so the quantize pass's
# int8-or-float32 choice compares like with like. That core issues VPMADDWD on two ports;
# Haswell and Zen 2 on one, where `sparsec calibrate` measures what the host does.
AVX2_INT8_COST_NS = (round(0.0183 * 24.1 / 35.8, 4), round(0.149 * 5.86 / 7.70, 3))
# bf16 on AVX2 (no bf16 arithmetic: pairs widened to fp32 as the tile is packed), measured as
# above: dense 45.1 / 35.8 ms (slower than fp32), 4x1-90 % 7.47 / 7.70 ms, per 2x1 pair.
AVX2_BF16_COST_NS = (round(0.0183 * 45.1 / 35.8, 4), round(0.149 / 2 * 7.47 / 7.70, 3))

KERNELS: list[KernelSpec] = [
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="scalar", pattern="dense", mr=4, nr=32,
               family="f32_gemm", template="f32-gemm/scalar.c.j2", params=gp.dense_params,
               cost_ns=SCALAR_GEMM_COST_NS),
    *[KernelSpec(op=DENSE, dtypes=FLOAT, isa="scalar", pattern=p, mr=4,
                 nr=Pattern(p).block[1], family="f32_spmm", template="f32-spmm/scalar.c.j2",
                 params=smp.spmm_params, cost_ns=SCALAR_SPMM_COST_NS[p])
      for p in SPARSE_PATTERNS],
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="scalar", pattern="runtime", mr=4, nr=32,
               family="f32_gemm", template="f32-gemm/scalar.c.j2", params=gp.dense_params),
    # NEON: 4 rows x 16 columns by lane; no ARM machine here to calibrate on, so its cost is
    # the AVX2 row's scaled by 8 lanes over 4.
    # Its feature-major form: 12 channels by 8 tokens, no patches (NEON has no masked loads).
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="neon", pattern="dense", mr=4, nr=16,
               family="f32_gemm", template="f32-gemm/neon.c.j2", parallel=True,
               params=functools.partial(gp.gemm_panels_params, mr=4, panel=16, channels=12,
                                        tokens_isa="neon"),
               scratch=functools.partial(gp.gemm_tokens_scratch, isa="neon", channels=12),
               reads_feature_major=True, feature_major=True, adds_residual=True,
               feature_major_if=functools.partial(gp.tokens_pay_off, isa="neon"),
               cost_ns={"generic": 0.0366}),
    # AVX2 also writes a feature-major output (f32-gemm/x86-tokens.c.j2, 6 channels by 16
    # tokens): a CNN's dense convs then read their patches in place, add their residual and
    # hand channels-first data on with no Im2Col, transpose or Add between them. Only where
    # gemm_params.tokens_pay_off.
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="avx2", pattern="dense", mr=6, nr=16,
               family="f32_gemm", template="f32-gemm/x86-panels.c.j2", parallel=True,
               params=functools.partial(gp.gemm_panels_params, mr=6, panel=16, isa="avx2",
                                        channels=6),
               scratch=functools.partial(gp.gemm_tokens_scratch, isa="avx2", channels=6),
               reads_feature_major=True, feature_major=True, reads_patches=True,
               adds_residual=True,
               feature_major_if=functools.partial(gp.tokens_pay_off, isa="avx2"),
               cost_ns={"generic": 0.0183}),
    # AVX-512: the same two forms, 8 channels by 48 tokens channels-first (24 of 32
    # registers accumulate, as the panel kernel's 12 x 32; gemm_params.TOKEN_VECTORS).
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="avx512f", pattern="dense", mr=12, nr=32,
               family="f32_gemm", template="f32-gemm/x86-panels.c.j2", parallel=True,
               params=functools.partial(gp.gemm_panels_params, mr=12, panel=32,
                                        isa="avx512f", channels=8),
               scratch=functools.partial(gp.gemm_tokens_scratch, isa="avx512f", channels=8),
               reads_feature_major=True, feature_major=True, reads_patches=True,
               adds_residual=True,
               feature_major_if=functools.partial(gp.tokens_pay_off, isa="avx512f"),
               cost_ns={"generic": 0.0177}),
    # Token-tile rows. NEON: 16 tokens (4 vectors, 8 accumulators); no ARM machine here to
    # calibrate on, so its costs are the AVX2 row's measured ones scaled by 8 lanes over 4.
    *[KernelSpec(op=DENSE, dtypes=FLOAT, isa=isa, pattern=p, mr=tokens, nr=1,
                 family="f32_spmm", template="f32-spmm/x86-tokens.c.j2", parallel=True,
                 feature_major=True, reads_patches=isa != "neon", adds_residual=True,
                 params=functools.partial(smp.spmm_tokens_params, tokens=tokens, isa=isa),
                 scratch=functools.partial(smp.spmm_tokens_scratch, tokens=tokens),
                 cost_ns={"generic": cost})
      for isa, tokens, costs in (("avx512f", 64, (0.034, 0.129, 0.53)),
                                 ("neon", 16, (0.084, 0.30, 1.15)),
                                 ("avx2", 32, (0.042, 0.149, 0.575)))
      for p, cost in zip(("1x1", "4x1", "16x1"), costs)],
    # NEON 1x16: as the AVX2 row, 6 rows (24 accumulators); cost scaled from it by lanes.
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="neon", pattern="1x16", mr=6, nr=16,
               family="f32_spmm", template="f32-spmm/neon.c.j2", parallel=True,
               params=functools.partial(smp.spmm_columns_params, mr=6),
               cost_ns={"generic": 0.80}),
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="avx2", pattern="1x16", mr=6, nr=16,
               family="f32_spmm", template="f32-spmm/avx2.c.j2", parallel=True,
               params=functools.partial(smp.spmm_columns_params, mr=6),
               cost_ns={"generic": 0.40}),
    KernelSpec(op=DENSE, dtypes=FLOAT, isa="avx512f", pattern="1x16", mr=16, nr=16,
               family="f32_spmm", template="f32-spmm/avx512f.c.j2", parallel=True,
               params=functools.partial(smp.spmm_columns_params, mr=16),
               scratch=functools.partial(smp.spmm_columns_scratch, mr=16),
               cost_ns={"generic": 0.35}),
    # int8 weights (--quantize dynamic): every row walks 4x1 groups; "dense" keeps them all.
    # A sparse row's cost is per kept group, a dense row's per weight element.
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="int8", isa="scalar", pattern=p, mr=1,
                 nr=1, family="qs8_dense", template="i8-dense/scalar.c.j2",
                 params=qp.int8_dense_params, scratch=qp.int8_scalar_scratch,
                 cost_ns={"generic": cost})
      for p, cost in (("dense", 0.39), ("4x1", 2.5))],
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="int8", isa=isa, pattern=p, mr=tokens,
                 nr=1, family="qs8_dense", template="i8-dense/x86-vnni-tokens.c.j2",
                 parallel=True,
                 params=functools.partial(qp.int8_dense_params, tokens=tokens, isa=isa),
                 scratch=functools.partial(qp.int8_tokens_scratch, tokens=tokens, isa=isa),
                 cost_ns={"generic": cost})
      # AVX-VNNI's numbers are AVX-512 VNNI's doubled (half the lanes): no host here has it;
      # NEON SDOT's doubled again (4 lanes): no ARM machine here; NEON without SDOT 1.8 times
      # that, its inner loop's instruction count over SDOT's (benchmarks/arm_instructions.py).
      for isa, tokens, costs in (("avx512vnni", 64, (0.0048, 0.046)),
                                 ("avxvnni", 32, (0.0096, 0.092)),
                                 ("neondot", 16, (0.0192, 0.184)),
                                 ("neon", 16, (0.035, 0.33)),
                                 ("avx2", 32, AVX2_INT8_COST_NS))
      for p, cost in zip(("dense", "4x1"), costs)],
    # AMX (x86-amx): the VNNI token-tile kernel at 32 tokens, its columns on tiles (TDPBSUD,
    # two C tiles of 16 channels x 16 tokens sharing each A tile); a 4x16 weight skips the
    # 4x16 blocks without a nonzero; a BITMASK weight is dense tiles expanded from its
    # nonzeros. Measured on a Sapphire Rapids-class VM, 128 rows, one thread; the earlier
    # estimates from AMX's peak were 2-15x low, and made 1x16-pruned int8 models slower
    # than float32:
    # - dense 0.0024 ns per element and row: 768 x 3072 0.0022, 384 x 1536 0.0026 (quantizing
    #   the activations, a cost per input element, weighs more in narrow layers);
    # - a kept 4x16 block 0.76 ns (`sparsec calibrate`): copying its activations into the B
    #   tiles dominates, so 1x16-pruned weights, which fill a third of their 4x16 blocks, run
    #   faster on the VNNI 4x1 rows or in float32;
    # - BITMASK 0.0026: 768 x 3072 at 70 % zeros 0.00232 against dense 0.0022 (its weights
    #   then fit L2; dense streams them, but one byte per element over 32 rows costs less
    #   than the products), 384 x 1536 0.0032. So int8 BITMASK does not win on this core;
    #   bf16's, with twice the bytes to stream, does.
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="int8", isa="amx", pattern=p,
                 mr=pk.AMX_TOKENS, nr=16, family="qs8_dense",
                 template="i8-dense/amx-tokens.c.j2", parallel=True,
                 params=functools.partial(qp.int8_dense_params, tokens=pk.AMX_TOKENS,
                                          isa="avx512vnni", amx=True),
                 scratch=qp.int8_amx_scratch, cost_ns={"generic": cost},
                 stream=SAPPHIRE_RAPIDS_STREAM)
      for p, cost in (("dense", 0.0024), ("4x16", 0.76), (BITMASK, 0.0026))],
    # bf16 weights (--dtype bf16), walked as 2x1 pairs; "dense" keeps them all. Costs per
    # weight element or kept pair and activation row, measured on the Zen 5 machine (which
    # has AVX512_BF16; the avx512f rows with it hidden) on 128x768x768 layers, dense and 90 %
    # sparse; the scalar rows on 64x256x256, where dense is the same loop over every pair.
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="bfloat16", isa="scalar", pattern=p,
                 mr=1, nr=1, family="bf16_dense", template="bf16-dense/scalar.c.j2",
                 params=bp.bf16_dense_params, cost_ns={"generic": cost})
      for p, cost in (("dense", 0.41), ("2x1", 0.82))],
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="bfloat16", isa=isa, pattern=p, mr=64,
                 nr=1, family="bf16_dense", template="bf16-dense/x86-tokens.c.j2",
                 parallel=True,
                 params=functools.partial(bp.bf16_dense_params, tokens=64, isa=isa),
                 scratch=functools.partial(bp.bf16_tokens_scratch, tokens=64, isa=isa),
                 cost_ns={"generic": cost})
      for isa, costs in (("avx512f", (0.0107, 0.033)), ("avx512bf16", (0.0065, 0.025)))
      for p, cost in zip(("dense", "2x1"), costs)],
    # AVX2 (x86-avx2): the same kernel at 32 tokens, the tile's pairs widened to floats as
    # they are packed, so its inner loop is the fp32 token kernels' FMAs (AVX2_BF16_COST_NS).
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="bfloat16", isa="avx2", pattern=p,
                 mr=32, nr=1, family="bf16_dense", template="bf16-dense/x86-tokens.c.j2",
                 parallel=True,
                 params=functools.partial(bp.bf16_dense_params, tokens=32, isa="avx2"),
                 scratch=functools.partial(bp.bf16_tokens_scratch, tokens=32, isa="avx2"),
                 cost_ns={"generic": cost})
      for p, cost in zip(("dense", "2x1"), AVX2_BF16_COST_NS)],
    # 1x16 blocks on AVX-512, two at a time (16 rows of A, 16 accumulators): for weights
    # pruned in 1x16 blocks, which 2x1 pairs walk one column at a time. Cost per 1x16 block
    # and row: `benchmarks/kernels.py --calibrate --target x86-avx512 --quantize bf16`
    # (768 x 768, M = 128), with `--hide avx512bf16` for the avx512f row.
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="bfloat16", isa=isa, pattern="1x16",
                 mr=16, nr=16, family="bf16_dense", template="bf16-dense/x86-columns.c.j2",
                 parallel=True, params=functools.partial(bp.bf16_columns_params, mr=16, isa=isa),
                 scratch=functools.partial(bp.bf16_columns_scratch, mr=16),
                 cost_ns={"generic": cost})
      for isa, cost in (("avx512f", 0.26), ("avx512bf16", 0.21))],
    # AMX bf16 (x86-amx): the bf16 token-tile kernel at 32 tokens, its columns on tiles
    # (TDPBF16PS) as above; a 2x16 weight skips its all-zero 2x16 blocks; BITMASK as for int8.
    # Measured as the int8 rows: dense 0.0031 (384 x 1536; 768 x 3072 streams: 0.0043),
    # a kept 2x16 block 0.38 (calibrate), BITMASK 0.0036 (384 x 1536 0.0041; 768 x 3072
    # at 70 % zeros 0.0038, 13 % faster than dense there).
    *[KernelSpec(op=DENSE, dtypes=FLOAT, weight_dtype="bfloat16", isa="amx", pattern=p,
                 mr=pk.AMX_TOKENS, nr=16, family="bf16_dense",
                 template="bf16-dense/amx-tokens.c.j2",
                 parallel=True,
                 params=functools.partial(bp.bf16_dense_params, tokens=pk.AMX_TOKENS,
                                          isa="avx512f", amx=True),
                 scratch=functools.partial(bp.bf16_tokens_scratch, tokens=pk.AMX_TOKENS,
                                           isa="avx512f", amx=True),
                 cost_ns={"generic": cost}, stream=SAPPHIRE_RAPIDS_STREAM)
      for p, cost in (("dense", 0.0031), ("2x16", 0.38), (BITMASK, 0.0036))],
    # Vectors of 4 where the target has no SIMD ISA: GCC lowers them to what the machine has.
    *[KernelSpec(op=ATTENTION, dtypes=FLOAT, isa=isa, mr=8, nr=vector, family="f32_attention",
                 template="f32-attention/vector.c.j2", parallel=True,
                 params=functools.partial(atp.attention_params, vector=vector,
                                          registers=registers))
      for isa, vector, registers in (("scalar", 4, 16), ("avx2", 8, 16),
                                     ("avx512f", 16, 32))],
    KernelSpec(op="MatMulInteger", dtypes=("uint8", "int8"), isa="scalar",
               family="x_matmulinteger", template="x-matmul-integer/scalar.c.j2",
               params=qp.matmul_integer_params),
    KernelSpec(op="QuantizeLinear", dtypes=FLOAT, isa="scalar", family="x_quantizelinear",
               template="x-quantize/linear.c.j2", params=qlp.quantize_linear_params),
    KernelSpec(op="DequantizeLinear", dtypes=("uint8", "int8", "uint16", "int16", "int32"),
               isa="scalar", family="x_dequantizelinear", template="x-quantize/linear.c.j2",
               params=qlp.quantize_linear_params),
    KernelSpec(op="DynamicQuantizeLinear", dtypes=FLOAT, isa="scalar",
               family="x_dynamicquantizelinear", template="x-quantize/dynamic.c.j2",
               params=qlp.dynamic_quantize_params),
    KernelSpec(op="MatMul", dtypes=FLOAT, isa="scalar", mr=4, nr=32, family="f32_matmul",
               template="f32-gemm/scalar.c.j2", params=gp.matmul_params),
    *[KernelSpec(op=op, dtypes=FLOATS + ("int32", "int64") if op == "Pow" else NUMERIC,
                 isa="scalar", family=f"x_{op.lower()}", template="x-elementwise/binary.c.j2",
                 params=ewp.binary_params)
      for op in ELEMENTWISE_BINARY],
    *[KernelSpec(op=op, dtypes=FLOATS if op in FLOAT_ONLY else SIGNED if op == "Neg"
                 else ("bool",) if op == "Not" else NUMERIC,
                 isa="scalar",
                 family=f"x_{op.lower()}", template="x-elementwise/unary.c.j2",
                 params=ewp.unary_params)
      for op in ELEMENTWISE_UNARY],
    *[KernelSpec(op=op, dtypes=ANY, isa="scalar", family=f"x_{op.lower()}",
                 template="x-copy/scalar.c.j2", params=shp.copy_params) for op in COPY_OPS],
    KernelSpec(op="Transpose", dtypes=ANY, isa="scalar", family="x_transpose",
               template="x-transpose/scalar.c.j2", params=shp.transpose_params, parallel=True),
    # fp32 matrix transposes move their tiles with the ISA's square transposes (a CNN stem's
    # GEMM output to NCHW: 0.8 ms scalar at 64 x 12544).
    *[KernelSpec(op="Transpose", dtypes=FLOAT, isa=isa, family="x_transpose",
                 template="x-transpose/scalar.c.j2",
                 params=functools.partial(shp.transpose_params, isa=isa), parallel=True)
      for isa in ("neon", "avx2", "avx512f")],
    KernelSpec(op="Gather", dtypes=ANY, isa="scalar", family="x_gather",
               template="x-gather/scalar.c.j2", params=shp.gather_params),
    KernelSpec(op="Concat", dtypes=ANY, isa="scalar", family="x_concat",
               template="x-concat/scalar.c.j2", params=shp.concat_params),
    KernelSpec(op="Expand", dtypes=ANY, isa="scalar", family="x_expand",
               template="x-expand/scalar.c.j2", params=shp.expand_params),
    KernelSpec(op="Slice", dtypes=ANY, isa="scalar", family="x_slice",
               template="x-slice/scalar.c.j2", params=shp.slice_params),
    KernelSpec(op="Cast", dtypes=ANY + ("float16",), isa="scalar", family="x_cast",
               template="x-cast/scalar.c.j2", params=shp.cast_params),
    KernelSpec(op="IsNaN", dtypes=FLOATS, isa="scalar", family="x_isnan",
               template="x-cast/scalar.c.j2", params=ip.isnan_params),
    KernelSpec(op="CumSum", dtypes=NUMERIC, isa="scalar", family="x_cumsum",
               template="x-cumsum/scalar.c.j2", params=ip.cumsum_params),
    KernelSpec(op="GatherElements", dtypes=ANY, isa="scalar", family="x_gatherelements",
               template="x-gather-elements/scalar.c.j2", params=ip.gather_elements_params),
    KernelSpec(op="GatherND", dtypes=ANY, isa="scalar", family="x_gathernd",
               template="x-gather-nd/scalar.c.j2", params=ip.gather_nd_params),
    KernelSpec(op="Where", dtypes=("bool",), isa="scalar", family="x_where",
               template="x-elementwise/where.c.j2", params=ewp.where_params),
    *[KernelSpec(op=op, dtypes=ANY if op == "Equal" else NUMERIC, isa="scalar",
                 family=f"x_{op.lower()}", template="x-elementwise/binary.c.j2",
                 params=ewp.binary_params) for op in COMPARISONS],
    *[KernelSpec(op=op, dtypes=("bool",), isa="scalar", family=f"x_{op.lower()}",
                 template="x-elementwise/binary.c.j2", params=ewp.binary_params)
      for op in LOGICAL_BINARY],
    KernelSpec(op="ReduceMean", dtypes=FLOATS, isa="scalar", family="x_reducemean",
               template="x-reduce/mean.c.j2", params=nrp.reduce_mean_params),
    *[KernelSpec(op=op, dtypes=FLOATS, isa="scalar", family=family,
                 template="f32-layernorm/scalar.c.j2", params=nrp.layer_norm_params,
                 parallel=True)
      for op, family in (("LayerNormalization", "x_layernorm"),
                         (ADD_LAYER_NORM, "x_addlayernorm"))],
    KernelSpec(op="Softmax", dtypes=FLOAT, isa="scalar", family="f32_softmax",
               template="f32-softmax/scalar.c.j2", params=nrp.softmax_params),
    # Convolutions (lower_conv): portable C that the target's flags vectorise: Im2Col's row
    # copies.
    KernelSpec(op=IM2COL, dtypes=FLOAT, isa="scalar", family="x_im2col",
               template="x-im2col/scalar.c.j2", params=cp.im2col_params, parallel=True),
    # DepthwiseConv: one template of GCC vectors as wide as the ISA's along the rows.
    *[KernelSpec(op=DEPTHWISE_CONV, dtypes=FLOAT, isa=isa, family="f32_depthwise",
                 template="f32-depthwise/scalar.c.j2",
                 params=functools.partial(cp.depthwise_params,
                                          isa=None if isa == "scalar" else isa),
                 scratch=functools.partial(cp.depthwise_scratch,
                                           isa=None if isa == "scalar" else isa),
                 parallel=True)
      for isa in ("scalar", "neon", "avx2", "avx512f")],
    # CNN operators. Portable C only: the pools run contiguous over W, so GCC vectorises
    # them for each target's flags (-mavx2, -mavx512f, NEON) without intrinsics.
    *[KernelSpec(op=op, dtypes=FLOATS + ("int8", "uint8") if "Max" in op else FLOATS,
                 isa="scalar", family=f"x_{op.lower()}", parallel=True,
                 template="x-pool/global.c.j2" if op.startswith("Global")
                 else "x-pool/window.c.j2",
                 params=pp.global_pool_params if op.startswith("Global") else pp.pool_params)
      for op in ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")],
    KernelSpec(op="BatchNormalization", dtypes=FLOATS, isa="scalar", family="x_batchnorm",
               template="x-batchnorm/scalar.c.j2", params=cnnp.batch_norm_params),
    *[KernelSpec(op=op, dtypes=FLOATS, isa="scalar", family=f"x_{op.lower()}",
                 template="x-elementwise/unary.c.j2", params=cnnp.parametric_activation_params)
      for op in PARAMETRIC_ACTIVATIONS],
    KernelSpec(op="PRelu", dtypes=FLOATS, isa="scalar", family="x_prelu",
               template="x-elementwise/binary.c.j2", params=ewp.binary_params),
    KernelSpec(op="Pad", dtypes=ANY, isa="scalar", family="x_pad",
               template="x-resample/pad.c.j2", params=cnnp.pad_params,
               scratch=cnnp.map_scratch),
    KernelSpec(op="Resize", dtypes=ANY, isa="scalar", family="x_resize",
               template="x-resample/resize.c.j2", params=cnnp.resize_params,
               scratch=cnnp.map_scratch),
]

_BY_KEY = {k.symbol: k for k in KERNELS}
assert len(_BY_KEY) == len(KERNELS), "kernel keys (symbols) must be unique"


def by_key(key: str) -> KernelSpec:
    """The kernel table row a node's recorded kernel key names."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KernelNotFoundError(f"no kernel {key!r} in the kernel table (an IR from another "
                                  "sparsec version?)") from None
