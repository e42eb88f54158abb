"""Template parameters for the int8 Dense kernels (weights quantized by the `quantize` pass).

Every int8 kernel walks the weight as 4x1 groups, the shape of one VNNI step (4 consecutive K
of one output channel in a 32-bit lane): per output column, the block rows that hold a nonzero
group and the group's 4 signed bytes. A "dense" weight keeps every group, so the dense int8
kernel is the same loop without skipping. Column sums of the codes fold the activations' zero
point out of the integer product: sum_k (x_k - zp) w_k = sum_k x_k w_k - zp * colsum.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.matrix_params import (
    TOKEN_TILE_ISAS,
    _activation_rows,
    _bias,
    _epilogue,
    _vector_epilogue,
)
from sparsec.codegen.params import KernelRequest
from sparsec.compiler.ir import Graph, Node

GROUP = 4  # K values per 32-bit lane of vpdpbusd

# AArch64 SDOT multiplies s8 by s8: codes are stored minus 128 (code_offset), and the range
# pass uses maxNum/minNum, which skip NaN as fmaxf does (FMAX would propagate it).
_NEON_DOT = {**TOKEN_TILE_ISAS["neon"], "name": "NEON dot-product", "ivec": "int32x4_t",
             "izero": "sparsec_neon_izero", "iload": "sparsec_neon_iload",
             "iset1": "vdupq_n_s32", "isub": "vsubq_s32", "dpbusd": "sparsec_neon_dot",
             "cvt": "vcvtq_f32_s32", "istore": "sparsec_neon_istore", "iadd": "vaddq_s32",
             "range_min": "vminnmq_f32", "range_max": "vmaxnmq_f32",
             "quantize": "sparsec_quantize_s8x16", "code_offset": 128}

# What the VNNI token-tile template needs beyond the fp32 token-tile names, per ISA.
VNNI_ISAS = {
    "neondot": _NEON_DOT,
    # ARMv8.0 NEON without SDOT (the arm-neon target's int8 kernels, and its fallback where
    # the dispatched SDOT kernel cannot run): the same sums from widening multiplies.
    "neon": {**_NEON_DOT, "name": "NEON widening multiplies",
             "dpbusd": "sparsec_neon_dot_widening",
             "dpbusd_full_range": "sparsec_neon_dot_widening_full_range"},
    "avx512vnni": {**TOKEN_TILE_ISAS["avx512f"], "name": "AVX-512 VNNI", "ivec": "__m512i",
                   "izero": "_mm512_setzero_si512", "iload": "_mm512_load_si512",
                   "iset1": "_mm512_set1_epi32", "isub": "_mm512_sub_epi32",
                   "dpbusd": "sparsec_dpbusd512", "cvt": "_mm512_cvtepi32_ps",
                   "mul": "_mm512_mul_ps", "set1": "_mm512_set1_ps", "min": "_mm512_min_ps",
                   "max": "_mm512_max_ps", "loadu": "_mm512_loadu_ps",
                   "istore": "_mm512_store_si512", "iadd": "_mm512_add_epi32",
                   "storeu": "_mm512_storeu_ps", "quantize": "sparsec_quantize_u8x64"},
    "avxvnni": {**TOKEN_TILE_ISAS["avx2"], "name": "AVX-VNNI", "ivec": "__m256i",
                "izero": "_mm256_setzero_si256", "iload": "_mm256_load_si256",
                "iset1": "_mm256_set1_epi32", "isub": "_mm256_sub_epi32",
                "dpbusd": "sparsec_dpbusd256", "cvt": "_mm256_cvtepi32_ps",
                "mul": "_mm256_mul_ps", "set1": "_mm256_set1_ps", "min": "_mm256_min_ps",
                "max": "_mm256_max_ps", "loadu": "_mm256_loadu_ps",
                "istore": "_mm256_store_si256", "iadd": "_mm256_add_epi32",
                "storeu": "_mm256_storeu_ps", "quantize": "sparsec_quantize_u8x32"},
}


TILE_BYTES = 64 * 1024  # activation codes per tile beyond which halving the tile measured faster


def token_tile(k: int, tokens: int, lanes: int) -> int:
    """Tokens per tile: the row's width, halved while the tile's codes (K x T bytes) exceed
    TILE_BYTES and stay a whole number of vectors; benchmarks/spmm.py --dtype int8 at K = 3072
    and 4096 ran 10 % faster with 32 tokens than with 64, at K <= 1024 no faster."""
    while tokens > 2 * lanes and -(-k // GROUP) * GROUP * tokens > TILE_BYTES:
        tokens //= 2
    return tokens


def groups_by_column(codes: np.ndarray, keep_all: bool) -> tuple[np.ndarray, ...]:
    """Per output column: col_ptr (N+1), the block row of each kept 4x1 group, and each
    group's 4 codes (zero padded past K) as one int32 lane."""
    k, n = codes.shape
    kb = -(-k // GROUP)
    padded = np.zeros((kb * GROUP, n), dtype=np.int8)
    padded[:k] = codes
    groups = padded.reshape(kb, GROUP, n).transpose(2, 0, 1)  # n, kb, 4
    keep = np.ones((n, kb), bool) if keep_all else groups.any(axis=2)
    columns, rows = np.nonzero(keep)  # column-major order: columns ascending, rows within
    col_ptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(columns, minlength=n), out=col_ptr[1:])
    lanes = np.ascontiguousarray(groups[columns, rows]).view(np.int32).reshape(-1)
    return col_ptr, rows.astype(np.int32), lanes


def int8_dense_params(req: KernelRequest, tokens: int = 0, isa: str = "") -> dict:
    """Dense node with int8 codes (input 1) and per-column scales (input 3). `tokens` and `isa`
    pick the VNNI token-tile form; without them, the portable kernel's parameters."""
    node, a, codes = req.node, req.input(0), req.input(1)
    scales = req.input(3)
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = codes.shape[1]
    keep_all = codes.sparsity is None or codes.sparsity.pattern == "dense"
    col_ptr, k_idx, lanes = groups_by_column(codes.data, keep_all)
    colsum = codes.data.astype(np.int32).sum(axis=0, dtype=np.int32)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "KB": -(-k // GROUP), "a_sm": a_sm, "a_sk": a_sk,
        "num_groups": int(k_idx.size), "dense": keep_all,
        "colsum": req.blob.add(colsum), "wscale": req.blob.add(scales.data.astype(np.float32)),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    # Each form stores only the tables it reads.
    if not tokens:
        params.update(col_ptr=req.blob.add(col_ptr), k_idx=req.blob.add(k_idx),
                      values=req.blob.add(lanes))
    else:
        tokens = token_tile(k, tokens, VNNI_ISAS[isa]["lanes"])
        # The range pass splits A into slices of at least 4096 floats (at most 8 slices).
        names = dict(VNNI_ISAS[isa])
        if "dpbusd_full_range" in names and codes.data.size and codes.data.min() < -127:
            names["dpbusd"] = names["dpbusd_full_range"]
        params.update(isa=names, T=tokens, SLICES=max(1, min(8, m * k // 4096)),
                      y_feature_major=False)
        if keep_all:  # column-major codes, KB lanes per column: the loop needs no index
            params.update(values=req.blob.add(lanes))
        else:  # one stream per column: (byte offset of the group's row in the tile, codes)
            pairs = np.stack([k_idx * (GROUP * tokens), lanes], axis=1).astype(np.int32)
            params.update(col_ptr=req.blob.add(col_ptr), pairs=req.blob.add(pairs))
    req.take(req.output())
    return params


def int8_scalar_scratch(graph: Graph, node: Node) -> int:
    """The whole activation matrix as u8 codes, rows padded to whole groups."""
    a = graph.tensors[node.inputs[0]]
    k, n = graph.tensors[node.inputs[1]].shape
    m = a.size // k if k else 0
    return m * -(-k // GROUP) * GROUP


def int8_tokens_scratch(graph: Graph, node: Node, tokens: int, isa: str) -> int:
    """Per token tile: u8 codes in VNNI order ([K/4][T][4]) and the fp32 Y tile ([N][T])."""
    k, n = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    tokens = token_tile(k, tokens, VNNI_ISAS[isa]["lanes"])
    tiles = max(1, -(-(a.size // k if k else 0) // tokens))
    return tiles * (-(-k // GROUP) * GROUP * tokens + 4 * n * tokens)
