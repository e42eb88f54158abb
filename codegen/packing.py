"""Weights re-laid at compile time in the groups and tiles the SIMD kernels walk, shared by the
fp32, int8 and bf16 Dense kernels: block-CSR by block columns, per-column runs of 4x1 int8
groups or 2x1 bf16 pairs in one 32-bit lane, and AMX tiles (as they are, or BITMASK:
nonzeros plus a bit per value)."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.request import KernelRequest
from sparsec.errors import SparsecError

GROUP = 4  # K values per 32-bit lane of vpdpbusd: the int8 kernels' 4x1 group


def column_blocks(packed, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-CSR by block rows -> by block columns: col_ptr, row index per block, values.

    SIMD kernels that vectorise over a block's outputs walk one column block at a time, so
    that its accumulators stay in registers."""
    block_rows = np.repeat(np.arange(packed.row_ptr.size - 1), np.diff(packed.row_ptr))
    order = np.lexsort((block_rows, packed.col_idx))
    col_ptr = np.zeros(columns + 1, dtype=np.int32)
    np.cumsum(np.bincount(packed.col_idx, minlength=columns), out=col_ptr[1:])
    return col_ptr, block_rows[order].astype(np.int32), packed.values[order]


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
