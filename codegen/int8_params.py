"""Template parameters for the int8 Dense kernels (weights quantized by the `quantize` pass).

Every int8 kernel walks the weight as 4x1 groups, the shape of one VNNI step (4 consecutive K
of one output channel in a 32-bit lane): per output column, the block rows that hold a nonzero
group and the group's 4 signed bytes. A "dense" weight keeps every group, so the dense int8
kernel is the same loop without skipping. Column sums of the codes fold the activations' zero
point out of the integer product: sum_k (x_k - zp) w_k = sum_k x_k w_k - zp * colsum.

MatMulInteger (templates/x-matmul-integer), the ONNX operator on integer operands, is here too.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.gemm_params import matmul_batches
from sparsec.codegen.isa import VNNI_ISAS
from sparsec.codegen.matrix_common import (
    activation_rows,
    bias_params,
    epilogue_params,
    vector_epilogue_params,
)
from sparsec.codegen.packing import (
    AMX_TOKENS,
    GROUP,
    amx_groups,
    amx_params,
    groups_by_column,
)
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.patterns import DENSE_PATTERN
from sparsec.errors import KernelNotFoundError

TILE_BYTES = 64 * 1024  # activation codes per tile beyond which halving the tile measured faster


def token_tile(k: int, tokens: int, lanes: int, code_bytes: int = 1) -> int:
    """Tokens per tile: the row's width, halved while the tile's codes (K x T codes of
    `code_bytes`) exceed TILE_BYTES and stay a whole number of vectors; benchmarks/spmm.py
    --dtype int8 at K = 3072 and 4096 ran 10 % faster with 32 tokens than with 64, at K <= 1024
    no faster."""
    while tokens > 2 * lanes and -(-k // GROUP) * GROUP * tokens * code_bytes > TILE_BYTES:
        tokens //= 2
    return tokens


def split_lanes(lanes: np.ndarray) -> np.ndarray:
    """4x1 groups' lanes of 4 s8 codes (w0 w1 w2 w3) as the AVX2 kernel's two int32 lanes per
    group, each two int16: (w0, w2) then (w1, w3), against the tile's even and odd codes."""
    codes = lanes.view(np.int8).reshape(-1, GROUP).astype(np.int16)
    return np.ascontiguousarray(codes[:, [0, 2, 1, 3]]).view(np.int32).reshape(-1)


def kept_groups(codes: np.ndarray, keep_all: bool) -> int:
    """4x1 groups a kernel walks: all of them, or those holding a nonzero code."""
    k, n = codes.shape
    kb = -(-k // GROUP)
    if keep_all:
        return kb * n
    padded = np.zeros((kb * GROUP, n), dtype=bool)
    padded[:k] = codes != 0
    return int(padded.reshape(kb, GROUP, n).any(axis=1).sum())


def int8_dense_params(req: KernelRequest, tokens: int = 0, isa: str = "",
                      amx: bool = False) -> dict:
    """Dense node with int8 codes (input 1) and per-column scales (input 3). `tokens` and `isa`
    pick the VNNI token-tile form; without them, the portable kernel's parameters. `amx`: the
    token-tile form's columns on AMX tiles (AMX_TOKENS tokens, avx512vnni for the rest)."""
    node, a, codes = req.node, req.input(0), req.input(1)
    scales = req.input(3)
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = codes.shape[1]
    pattern = DENSE_PATTERN if codes.sparsity is None else codes.sparsity.pattern
    keep_all = pattern.computes_every_product  # BITMASK: dense tiles, compressed in memory
    colsum = codes.data.astype(np.int32).sum(axis=0, dtype=np.int32)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "KB": -(-k // GROUP), "a_sm": a_sm, "a_sk": a_sk,
        "num_groups": kept_groups(codes.data, keep_all), "dense": keep_all,
        "colsum": req.blob.add(colsum), "wscale": req.blob.add(scales.data.astype(np.float32)),
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
        **vector_epilogue_params(node.attrs),
    }
    # Each form stores only the tables it reads.
    if not amx:
        col_ptr, k_idx, lanes = groups_by_column(codes.data, keep_all)
    if not tokens:
        params.update(col_ptr=req.blob.add(col_ptr), k_idx=req.blob.add(k_idx),
                      values=req.blob.add(lanes))
    else:
        vectors = VNNI_ISAS[isa]
        parts = vectors.tile_parts
        tokens = token_tile(k, tokens, vectors.lanes, parts)
        if parts == 2:
            lanes = split_lanes(lanes)
        full_range = vectors.int8.dpbusd_full_range
        if full_range and codes.data.size and codes.data.min() < -127:
            vectors = vectors.with_int8(dpbusd=full_range)
        # The range pass splits A into slices of at least 4096 floats (at most 8 slices).
        params.update(isa=vectors.template_names(), T=tokens,
                      SLICES=max(1, min(8, m * k // 4096)), y_feature_major=False,
                      KBX=amx_groups(k) if amx else -(-k // GROUP))
        if amx:
            params.update(amx_params(req, codes.data, keep_all, pattern.is_bitmask))
        elif keep_all:  # column-major codes, KB lanes per column: the loop needs no index
            params.update(values=req.blob.add(lanes))
        else:  # one stream per column: (byte offset of the group's row in the tile, codes)
            pairs = np.concatenate([(k_idx * (GROUP * tokens * parts))[:, None],
                                    lanes.reshape(-1, parts)], axis=1).astype(np.int32)
            params.update(col_ptr=req.blob.add(col_ptr), pairs=req.blob.add(pairs))
    req.take(req.output())
    return params


def int8_amx_scratch(graph: Graph, node: Node) -> int:
    """Per token tile: u8 codes for whole B tiles ([KBX][16][4]) and the fp32 Y tile."""
    k, n = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    tiles = max(1, -(-(a.size // k if k else 0) // AMX_TOKENS))
    return tiles * (amx_groups(k) * GROUP * AMX_TOKENS + 4 * n * AMX_TOKENS)


def int8_scalar_scratch(graph: Graph, node: Node) -> int:
    """The whole activation matrix as u8 codes, rows padded to whole groups."""
    a = graph.tensors[node.inputs[0]]
    k, n = graph.tensors[node.inputs[1]].shape
    m = a.size // k if k else 0
    return m * -(-k // GROUP) * GROUP


def int8_tokens_scratch(graph: Graph, node: Node, tokens: int, isa: str) -> int:
    """Per token tile: codes in VNNI order ([K/4][T][4] u8; AVX2 [K/4][2][T][2] u16) and the
    fp32 Y tile ([N][T])."""
    k, n = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    parts = VNNI_ISAS[isa].tile_parts
    tokens = token_tile(k, tokens, VNNI_ISAS[isa].lanes, parts)
    tiles = max(1, -(-(a.size // k if k else 0) // tokens))
    return tiles * (-(-k // GROUP) * GROUP * tokens * parts + 4 * n * tokens)


def matmul_integer_params(req: KernelRequest) -> dict:
    """MatMulInteger: numpy.matmul batching; zero points per tensor, per row of A or per
    column of B."""
    a, b, y = req.input(0), req.input(1), req.output()
    m, k, n, batches = matmul_batches(a, b)
    req.take(a)
    req.take(b)
    params = {"a_ctype": CTYPES[a.dtype], "b_ctype": CTYPES[b.dtype], "M": m, "K": k, "N": n,
              "batches": batches if len(batches) > 1 else []}
    for key, index, along in (("a", 2, m), ("b", 3, n)):
        zp = req.input(index)
        params[f"has_{key}_zp"] = req.take(zp)
        if zp is not None:
            if zp.size not in (1, along):
                raise KernelNotFoundError(f"node {req.node.name!r}: {key}_zero_point of shape "
                                          f"{zp.shape}; sparsec takes one per tensor or one "
                                          f"per {'row of A' if key == 'a' else 'column of B'}")
            params[f"{key}_zp_ctype"] = CTYPES[zp.dtype]
            params["a_zp_sm" if key == "a" else "b_zp_sn"] = 1 if zp.size > 1 else 0
    req.take(y)
    return params
