"""Template parameters for the int8 Dense kernels (weights quantized by the `quantize` pass).

Every int8 kernel walks the weight as 4x1 groups, the shape of one VNNI step (4 consecutive K
of one output channel in a 32-bit lane): per output column, the block rows that hold a nonzero
group and the group's 4 signed bytes. A "dense" weight keeps every group, so the dense int8
kernel is the same loop without skipping. Column sums of the codes fold the activations' zero
point out of the integer product: sum_k (x_k - zp) w_k = sum_k x_k w_k - zp * colsum.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.isa import VNNI_ISAS
from sparsec.codegen.matrix_params import (
    _activation_rows,
    _bias,
    _epilogue,
    _vector_epilogue,
)
from sparsec.codegen.params import KernelRequest
from sparsec.compiler.ir import BITMASK, Graph, Node
from sparsec.errors import SparsecError

GROUP = 4  # K values per 32-bit lane of vpdpbusd

TILE_BYTES = 64 * 1024  # activation codes per tile beyond which halving the tile measured faster


def token_tile(k: int, tokens: int, lanes: int, code_bytes: int = 1) -> int:
    """Tokens per tile: the row's width, halved while the tile's codes (K x T codes of
    `code_bytes`) exceed TILE_BYTES and stay a whole number of vectors; benchmarks/spmm.py
    --dtype int8 at K = 3072 and 4096 ran 10 % faster with 32 tokens than with 64, at K <= 1024
    no faster."""
    while tokens > 2 * lanes and -(-k // GROUP) * GROUP * tokens * code_bytes > TILE_BYTES:
        tokens //= 2
    return tokens


def groups_by_column(codes: np.ndarray, keep_all: bool,
                     group: int = GROUP) -> tuple[np.ndarray, ...]:
    """Per output column: col_ptr (N+1), the block row of each kept group (4x1 of int8
    codes; 2x1 of bf16 bits, `group` = 2), and each group's values (zero padded past K) as
    one int32 lane."""
    k, n = codes.shape
    assert group * codes.dtype.itemsize == 4, "a group fills one 32-bit lane"
    kb = -(-k // group)
    padded = np.zeros((kb * group, n), dtype=codes.dtype)
    padded[:k] = codes
    groups = padded.reshape(kb, group, n).transpose(2, 0, 1)  # n, kb, group
    keep = np.ones((n, kb), bool) if keep_all else groups.any(axis=2)
    columns, rows = np.nonzero(keep)  # column-major order: columns ascending, rows within
    col_ptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(columns, minlength=n), out=col_ptr[1:])
    lanes = np.ascontiguousarray(groups[columns, rows]).view(np.int32).reshape(-1)
    return col_ptr, rows.astype(np.int32), lanes


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
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = codes.shape[1]
    pattern = "dense" if codes.sparsity is None else codes.sparsity.pattern
    keep_all = pattern in ("dense", BITMASK)  # BITMASK: dense tiles, compressed in memory
    colsum = codes.data.astype(np.int32).sum(axis=0, dtype=np.int32)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "KB": -(-k // GROUP), "a_sm": a_sm, "a_sk": a_sk,
        "num_groups": kept_groups(codes.data, keep_all), "dense": keep_all,
        "colsum": req.blob.add(colsum), "wscale": req.blob.add(scales.data.astype(np.float32)),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
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
                      amx=amx, KBX=amx_groups(k) if amx else -(-k // GROUP))
        if amx:
            params.update(amx_params(req, codes.data, keep_all, pattern == BITMASK))
        elif keep_all:  # column-major codes, KB lanes per column: the loop needs no index
            params.update(values=req.blob.add(lanes))
        else:  # one stream per column: (byte offset of the group's row in the tile, codes)
            pairs = np.concatenate([(k_idx * (GROUP * tokens * parts))[:, None],
                                    lanes.reshape(-1, parts)], axis=1).astype(np.int32)
            params.update(col_ptr=req.blob.add(col_ptr), pairs=req.blob.add(pairs))
    req.take(req.output())
    return params


# AMX (TDPBSUD): the token-tile kernel's quantized activations, AMX_TOKENS tokens a tile in VNNI
# order ([groups][tokens][4] u8), are the B operands as they are: 16 consecutive 4x1 groups by
# 16 tokens make one 16 x 64-byte B tile (rows strided by the tile's 4 * AMX_TOKENS bytes). The
# weights are the A operand, s8, packed at compile time into 16 x 64-byte tiles per panel of 16
# output channels: row c holds channel c's codes for 16 groups. A "dense" weight's tiles walk
# every group in order; a 4x16 one's keep only the groups where one of the panel's channels has
# a nonzero, so a tile's groups need not be consecutive and the kernel copies their activation
# rows into staging first (one row of 4 * AMX_TOKENS bytes per group).
# Tokens per pass over the weights: two C tiles of 16 tokens side by side share each A tile, so
# a tile of weights is read (and, BITMASK, expanded) once per 32 tokens; Intel's AMX guidance
# is to reuse every tile load across tile products, one load per product being the bound.
AMX_TOKENS = 32
AMX_ROWS = 16  # C and A tile rows: output channels per panel
AMX_GROUPS = 16  # A tile dwords per row, B tile rows: 4x1 groups per tile


def amx_tiles(codes: np.ndarray, keep_all: bool, group: int = GROUP) -> tuple[np.ndarray, ...]:
    """Per panel of 16 output channels: tile_ptr (panels + 1), and per tile its first group's
    row offset in the B operand when its 16 groups are consecutive (else -1), the row offsets
    of its 16 groups (padding repeats a kept group: its weights are zero), and its 1024 bytes
    of weights, [channel][group][`group` values]: 4 s8 codes, or 2 bf16 (bits as uint16)."""
    k, n = codes.shape
    assert group * codes.dtype.itemsize == 4, "a group fills one 32-bit lane"
    kb = -(-k // group)
    panels = -(-n // AMX_ROWS)
    padded = np.zeros((kb * group, panels * AMX_ROWS), dtype=codes.dtype)
    padded[:k, :n] = codes
    # [panel][group][channel][values]
    blocks = padded.reshape(kb, group, panels, AMX_ROWS).transpose(2, 0, 3, 1)
    tile_ptr, starts, rows, tiles = [0], [], [], []
    for panel in range(panels):
        if keep_all:
            kept = np.arange(-(-kb // AMX_GROUPS) * AMX_GROUPS)  # past kb: zero codes
        else:
            kept = np.flatnonzero(blocks[panel].any(axis=(1, 2)))
        for first in range(0, len(kept), AMX_GROUPS):
            groups = kept[first:first + AMX_GROUPS]
            consecutive = len(groups) == AMX_GROUPS and groups[-1] - groups[0] == AMX_GROUPS - 1
            tile = np.zeros((AMX_ROWS, AMX_GROUPS, group), dtype=codes.dtype)
            real = groups[groups < kb]
            tile[:, :len(real)] = blocks[panel, real].transpose(1, 0, 2)
            padding = np.full(AMX_GROUPS - len(groups), groups[-1])
            starts.append(int(groups[0]) if consecutive else -1)
            rows.append(np.concatenate([groups, padding]))
            tiles.append(tile)
        tile_ptr.append(len(starts))
    row_bytes = 4 * AMX_TOKENS  # a B row: one 32-bit lane per token
    return (np.array(tile_ptr, np.int32),
            np.array([s * row_bytes if s >= 0 else -1 for s in starts], np.int32),
            (np.array(rows, np.int32).reshape(-1, AMX_GROUPS) * row_bytes).astype(np.int32),
            np.array(tiles, codes.dtype).reshape(-1, AMX_ROWS * AMX_GROUPS * group)
            .view(np.uint8))


def bitmask_tiles(tiles: np.ndarray, value_bytes: int) -> tuple[np.ndarray, ...]:
    """A tiles (rows of 1024 bytes, from amx_tiles) without their zero values, for the
    BITMASK form: per 64-byte tile row a mask with one bit per value of `value_bytes` (64 bits
    for int8, 32 for bf16; bit i is value i), set where the value is nonzero; each tile's
    byte offset into the nonzeros; and the nonzero values, tile by tile and row by row."""
    lanes = 64 // value_bytes
    values = tiles.reshape(len(tiles), AMX_ROWS, lanes, value_bytes)
    present = values.any(axis=3)
    masks = np.packbits(present, axis=2, bitorder="little")  # tiles, rows, lanes / 8 bytes
    sizes = present.sum(axis=(1, 2)) * value_bytes
    offsets = np.zeros(len(tiles), np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    if offsets.size and offsets[-1] + sizes[-1] >= 2**31:
        raise SparsecError("a BITMASK weight's nonzeros exceed 2 GiB; compile it without "
                           "--target x86-amx, or with --pattern dense")
    return (np.ascontiguousarray(masks).reshape(-1), offsets.astype(np.int32),
            np.ascontiguousarray(values[present]).reshape(-1))


def amx_params(req: KernelRequest, values: np.ndarray, keep_all: bool, bitmask: bool,
               group: int = GROUP) -> dict:
    """The tables of the AMX tile loop (templates/amx-tiles.j2) for K x N `values` (int8
    codes, or bf16 bits as uint16) walked in `group`-value groups: the A tiles as they are,
    or for BITMASK (every group kept) their masks and nonzeros."""
    tile_ptr, starts, rows, tiles = amx_tiles(values, keep_all, group)
    params = {"num_tiles": int(len(starts)), "tile_ptr": req.blob.add(tile_ptr),
              "bitmask": bitmask, "value_bytes": values.dtype.itemsize}
    if bitmask:
        masks, offsets, nonzeros = bitmask_tiles(tiles, values.dtype.itemsize)
        params.update(tile_masks=req.blob.add(masks), tile_values=req.blob.add(offsets),
                      nonzeros=req.blob.add(nonzeros))
    else:
        params.update(tile_start=req.blob.add(starts), tile_rows=req.blob.add(rows),
                      tiles=req.blob.add(tiles))
    return params


def amx_groups(k: int, group: int = GROUP) -> int:
    """Groups of the B operand per token tile: K's groups rounded up to whole B tiles."""
    return -(-k // (group * AMX_GROUPS)) * AMX_GROUPS


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
