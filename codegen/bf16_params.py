"""Template parameters for the bf16 Dense kernels (`--dtype bf16`).

Weights are rounded to bf16 at compile time and activations when the kernel runs (round to
nearest even, as VCVTNE2PS2BF16); products are summed in fp32. VDPBF16PS takes two bf16 per
32-bit lane, consecutive in K, so the kernels walk the weight as 2x1 groups: per output column,
the pairs that hold a nonzero (all of them for a "dense" weight) and each pair's two bf16 as one
lane. The token-tile form lays a tile of T tokens' activations out as [K/2][T] pairs.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.isa import BF16_ISAS
from sparsec.codegen.matrix_common import (
    activation_rows,
    bias_params,
    epilogue_params,
    vector_epilogue_params,
)
from sparsec.codegen.packing import (
    AMX_TOKENS,
    amx_groups,
    amx_params,
    column_blocks,
    groups_by_column,
)
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.patterns import DENSE_PATTERN

PAIR = 2  # K values per 32-bit lane of vdpbf16ps
TILE_BYTES = 64 * 1024  # bf16 activations per tile beyond which the tile is halved


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def token_tile(k: int, tokens: int, lanes: int, parts: int = 1) -> int:
    """Tokens per tile: halved while the tile's activations (K x T x 2 bytes, twice that
    widened to floats) exceed TILE_BYTES and the tile stays a whole number of vectors."""
    while tokens > 2 * lanes and -(-k // PAIR) * PAIR * tokens * 2 * parts > TILE_BYTES:
        tokens //= 2
    return tokens


def bf16_dense_params(req: KernelRequest, tokens: int = 0, isa: str = "",
                      amx: bool = False) -> dict:
    """Dense node in bf16 (node attr precision); `tokens` and `isa` pick the token-tile form,
    without them the portable kernel's parameters. `amx`: the token-tile form's columns on
    AMX tiles (TDPBF16PS, 16 tokens; the pairs packed by AVX-512F as codegen/packing.
    amx_tiles packs int8 groups, a 2x16 weight skipping its all-zero 2x16 blocks)."""
    node, a, weight = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    pattern = DENSE_PATTERN if weight.sparsity is None else weight.sparsity.pattern
    keep_all = pattern.computes_every_product  # BITMASK: dense tiles, compressed in memory
    # -0.0 (a pruned weight times -1 in the exporter) must not keep its pair
    bits = bf16_bits(np.where(weight.data == 0, np.float32(0), weight.data))
    col_ptr, k_idx, lanes = groups_by_column(bits, keep_all, PAIR)
    if amx:
        tokens = AMX_TOKENS
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "KP": -(-k // PAIR), "a_sm": a_sm, "a_sk": a_sk,
        "num_pairs": int(k_idx.size), "dense": keep_all,
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
        **vector_epilogue_params(node.attrs),
    }
    if not tokens:
        params.update(col_ptr=req.blob.add(col_ptr), k_idx=req.blob.add(k_idx),
                      values=req.blob.add(lanes))
    else:
        parts = BF16_ISAS[isa].tile_parts
        tokens = tokens if amx else token_tile(k, tokens, BF16_ISAS[isa].lanes, parts)
        params.update(isa=BF16_ISAS[isa].template_names(), T=tokens, y_feature_major=False,
                      KPX=amx_groups(k, PAIR) if amx else -(-k // PAIR))
        if amx:
            params.update(amx_params(req, bits, keep_all, pattern.is_bitmask, PAIR))
        elif keep_all:  # column-major pairs, KP lanes per column: the loop needs no index
            params.update(values=req.blob.add(lanes))
        else:  # one stream per column: (byte offset of the pair's row in the tile, the pair)
            pairs = np.stack([k_idx * (4 * tokens * parts), lanes], axis=1).astype(np.int32)
            params.update(col_ptr=req.blob.add(col_ptr), pairs=req.blob.add(pairs))
    req.take(req.output())
    return params


def bf16_columns_params(req: KernelRequest, mr: int, isa: str) -> dict:
    """1x16 blocks taken two at a time for the AVX-512 column kernel (bf16-dense/
    x86-columns.c.j2): per column block, its nonzero blocks in K order paired (kA, kB), the
    odd last one with row K of the packed activations (zero) and zero weights; a pair's
    values are 16 lanes, each one output's W[kA][n] as bf16 in the low half, W[kB][n] high."""
    node, a, weight = req.node, req.input(0), req.input(1)
    packed = weight.sparsity.packed
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    columns = -(-n // packed.cols)
    col_ptr, k_idx, values = column_blocks(packed, columns)  # values: [block][1][16]
    bits = bf16_bits(np.where(values == 0, np.float32(0), values)).reshape(-1, 16)
    counts = np.diff(col_ptr)
    pair_ptr = np.zeros(columns + 1, np.int32)
    np.cumsum(-(-counts // 2), out=pair_ptr[1:])
    pair_k = np.full((int(pair_ptr[-1]), 2), k, np.int32)
    lanes = np.zeros((int(pair_ptr[-1]), 16), np.uint32)
    for column in range(columns):
        first, last = col_ptr[column], col_ptr[column + 1]
        pairs = slice(pair_ptr[column], pair_ptr[column + 1])
        even, odd = np.arange(first, last, 2), np.arange(first + 1, last, 2)
        pair_k[pairs, 0] = k_idx[even]
        pair_k[pairs.start:pairs.start + len(odd), 1] = k_idx[odd]
        lanes[pairs] = bits[even]
        lanes[pairs.start:pairs.start + len(odd)] |= bits[odd].astype(np.uint32) << 16
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "NB": columns, "MR": mr,
        "n_tail": n - (columns - 1) * packed.cols, "num_blocks": packed.num_blocks,
        "isa": BF16_ISAS[isa].template_names(), "fma": isa == "avx512f",
        "pair_ptr": req.blob.add(pair_ptr), "pair_k": req.blob.add(pair_k),
        "values": req.blob.add(lanes),
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
        **vector_epilogue_params(node.attrs),
    }
    req.take(req.output())
    return params


def bf16_columns_scratch(graph: Graph, node: Node, mr: int) -> int:
    """A packed tile by tile as bf16-rounded floats, [tiles][K + 1][MR]."""
    k, _ = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    m = a.size // k if k else 0
    return 4 * max(1, -(-m // mr)) * mr * (k + 1)


def bf16_tokens_scratch(graph: Graph, node: Node, tokens: int, isa: str,
                        amx: bool = False) -> int:
    """Per token tile: bf16 pairs ([KPX][T] lanes; AVX2 [KP][2][T] floats) and the fp32 Y
    tile ([N][T])."""
    k, n = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    parts = BF16_ISAS[isa].tile_parts
    tokens = AMX_TOKENS if amx else token_tile(k, tokens, BF16_ISAS[isa].lanes, parts)
    pairs = amx_groups(k, PAIR) if amx else -(-k // PAIR)
    tiles = max(1, -(-(a.size // k if k else 0) // tokens))
    return tiles * 4 * (pairs * tokens * parts + n * tokens)
