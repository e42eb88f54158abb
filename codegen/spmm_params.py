"""Template parameters for the fp32 block-sparse matrix kernels (templates/f32-spmm).

Weights are re-laid here at compile time in the form each kernel walks: block-CSR by rows for
the portable kernel; by columns for the SIMD kernels that vectorise over a block's outputs
(1x16); per output column, in K chunks, for the token-tile kernels that vectorise over tokens
(Rx1).
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.isa import TOKEN_TILE_ISAS
from sparsec.codegen.matrix_common import (
    activation_rows,
    bias_params,
    epilogue_params,
    vector_epilogue_params,
)
from sparsec.codegen.packing import column_blocks
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node
from sparsec.compiler.passes.absorb_patches import dense_rows


def spmm_params(req: KernelRequest) -> dict:
    """Dense node with a block-sparse weight: the pattern's tables go into the weight blob."""
    node, a = req.node, req.input(0)
    packed = req.input(1).sparsity.packed
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = req.input(1).shape[1]
    rows, cols = packed.rows, packed.cols
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "R": rows, "C": cols, "a_sm": a_sm, "a_sk": a_sk,
        "KB": -(-k // rows), "NB": -(-n // cols), "k_tail": k - (-(-k // rows) - 1) * rows,
        "n_tail": n - (-(-n // cols) - 1) * cols, "MR": 4, "num_blocks": packed.num_blocks,
        "row_ptr": req.blob.add(packed.row_ptr), "col_idx": req.blob.add(packed.col_idx),
        "values": req.blob.add(packed.values),
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
    }
    req.take(req.output())
    return params


# K chunking of the token-tile kernels: rows of the transposed A tile per chunk at 64 tokens
# (64 rows x 64 tokens x 4 bytes = 16 KB, half an L1), and output columns per parallel task
# (the columns that share each chunk while it is in L1). A column loads and stores its
# accumulators once per chunk; where the weight is so sparse that a column has fewer than
# MIN_BLOCKS_PER_CHUNK blocks in a chunk, that overhead rivals the FMAs, so the chunk grows up
# to MAX_TILE_ROWS (32 KB, still inside a 48 KB L1). Measured, same process, alternating
# builds: at 4 blocks, MiniLM's 90 % 4x1 layers ran 10-15 % faster than at 64 rows; at 16
# (from 4), 90 % unstructured MiniLM ran 9 % faster on x86-avx2 and 6 % on x86-avx512, and
# MobileNet-v1 with 90 % pointwise convs 11 % on x86-amx and 4 % on x86-avx2; the 80 % MiniLMs
# and MobileNet-v2 moved under 2 %, except 4x1-80, 4 % faster. Larger tiles (192, 256 rows)
# measured no better.
L1_TILE_ROWS = 64
MAX_TILE_ROWS = 128
MIN_BLOCKS_PER_CHUNK = 16
COLUMNS_PER_TASK = 128  # a multiple of every ISA's lanes: the store pass takes L columns a step

TILE_GROUP = 8
"""Full token tiles each output column walks in turn where the kernel reads A in place and
stores Y from its registers (feature-major both): a column's rows of Y, and of the residual,
go out as runs of 8 * T tokens (1 KB on AVX2) instead of a line or two a tile. Tile by tile,
a 56x56 layer's 256 rows a plane apart were more streams than the prefetchers follow: pruned
ResNet-50's residual 1x1 convs ran at a third of their bandwidth (1.40 -> 0.53 ms; x86-avx2,
Zen 3). Groups of 4 measured within noise of 8, and 16 no better."""

# L1 data caches of the x86 cores we target: 64 sets of 64-byte lines, 8 ways (Zen 2-4, 32 KB)
# or 12 (Intel, 48 KB).
L1_SETS, L1_WAYS, CACHE_LINE = 64, 8, 64


def rows_fit_l1_sets(row_stride_bytes: int, rows: int, row_bytes: int) -> bool:
    """Whether `rows` spans of `row_bytes`, `row_stride_bytes` apart, fit L1's sets: no set
    asked for more lines than it has ways. A stride that is a multiple of 512 bytes (a
    128-token sequence's feature-major rows) puts every row in the same 8 of 64 sets, 16 lines
    each for a K chunk, so the chunk read in place evicted itself: MiniLM's 4x1-90 layers ran
    8 % slower than with the tile copied to scratch. Milder crowding (a 56x56 or 14x14 CNN
    plane) measured no better copied, so only this case copies."""
    first = np.arange(rows, dtype=np.int64) * row_stride_bytes // CACHE_LINE
    last = (np.arange(rows, dtype=np.int64) * row_stride_bytes + row_bytes - 1) // CACHE_LINE
    lines = np.unique(np.concatenate([np.arange(f, l + 1) for f, l in zip(first, last)]))
    return int(np.bincount(lines % L1_SETS, minlength=L1_SETS).max()) <= L1_WAYS


def chunk_block_rows(packed, n: int, tokens: int) -> int:
    """Block rows of W per K chunk of a token-tile kernel."""
    block_rows = packed.row_ptr.size - 1
    chunk = max(1, L1_TILE_ROWS * 64 // (tokens * packed.rows))
    largest = max(1, MAX_TILE_ROWS * 64 // (tokens * packed.rows))
    blocks_per_row_and_column = packed.num_blocks / max(1, block_rows * n)
    while (chunk * 2 <= largest and chunk < block_rows
           and chunk * blocks_per_row_and_column < MIN_BLOCKS_PER_CHUNK):
        chunk *= 2
    return chunk


def spmm_tokens_params(req: KernelRequest, tokens: int, isa: str) -> dict:
    """Rx1-block weight for SIMD kernels that vectorise over tokens: per-output-column CSR
    (block row index and R values per block); the kernel transposes A tiles in scratch."""
    node, a, weight = req.node, req.input(0), req.input(1)
    packed = weight.sparsity.packed
    patches = node.attrs.get("patches")
    if patches:  # absorb_patches: A's rows are X's channel planes, shifted per tap
        m, k = dense_rows(req.graph, node), weight.shape[0]
        a_sm, a_sk = 1, patches["plane"][0] * patches["plane"][1]
    else:
        m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    if a.layout == FEATURE_MAJOR:  # choose_layouts: the producer wrote A^T (K x M)
        a_sm, a_sk = 1, m
    n = weight.shape[1]
    col_ptr, k_idx, values = column_blocks(packed, n)
    block_rows = packed.row_ptr.size - 1
    lanes = TOKEN_TILE_ISAS[isa].lanes
    chunk = token_chunk(packed, n, tokens, patches)
    patch_params = {}
    if patches:
        patch_params = shifted_rows(req, patches, m, tokens, lanes, chunk, packed.rows)
    copy = copies_patches(packed, k, n, patches)
    chunks = max(1, -(-block_rows // chunk))
    per_task = COLUMNS_PER_TASK
    tasks = -(-n // per_task)
    # Blocks in the order the kernel walks them: by task (column range), K chunk, column,
    # then block row. Within a task's chunk the columns go in order of their block counts,
    # most first (column_at says which column is i-th), so the loops over a column's blocks
    # run the same number of times from one column to the next: in column order the counts
    # were random, and their loop exits mispredicted. Segment s = (task * chunks + chunk) *
    # per_task + i.
    columns = np.repeat(np.arange(n), np.diff(col_ptr))
    slot = ((columns // per_task * chunks + k_idx // chunk) * per_task
            + columns % per_task)
    counts = np.bincount(slot, minlength=tasks * chunks * per_task).reshape(-1, per_task)
    real = (np.arange(tasks * per_task) < n).reshape(tasks, 1, per_task)
    real = np.broadcast_to(real, (tasks, chunks, per_task)).reshape(-1, per_task)
    column_at = np.lexsort((-counts, ~real), axis=-1)
    position = np.argsort(column_at, axis=-1)  # the inverse: each column's place i
    segment = slot // per_task * per_task + position.reshape(-1)[slot]
    column_at = column_at.astype(np.uint16)
    order = np.argsort(segment, kind="stable")
    segment_ptr = np.zeros(tasks * chunks * per_task + 1, np.int32)
    np.cumsum(np.bincount(segment, minlength=tasks * chunks * per_task), out=segment_ptr[1:])
    k_idx, values = k_idx[order], values[order]
    if copy:  # a chunk's rows are copied to the start of its task's scratch
        k_idx = k_idx % chunk
    req.take(a)
    params = {
        "isa": TOKEN_TILE_ISAS[isa].template_names(), "KC": chunk, "CHUNKS": chunks,
        "CT": per_task, "segment_ptr": req.blob.add(segment_ptr),
        "column_at": req.blob.add(np.ascontiguousarray(column_at)),
        "M": m, "K": k, "N": n, "R": packed.rows, "KB": packed.row_ptr.size - 1, "T": tokens,
        "a_sm": a_sm, "a_sk": a_sk, "num_blocks": packed.num_blocks,
        "col_ptr": req.blob.add(col_ptr), "k_idx": req.blob.add(k_idx),
        "values": req.blob.add(values), **bias_params(req, m, n),
        "residual": req.take(req.input(3)),  # absorb_residual: after the bias, in this order
        **epilogue_params(req, node.attrs, "float32"), **vector_epilogue_params(node.attrs),
        "y_feature_major": req.output().layout == FEATURE_MAJOR,
        # A read in place needs every block row inside A: a last block that hangs past K
        # reads the scratch copy's zero rows instead (0 x whatever lies beyond A is NaN
        # for an Inf there, and may be past the arena's end).
        # Read in place only where a chunk's rows spread over L1's sets (rows_fit_l1_sets).
        "direct_rows": (not patches and a_sm == 1 and a_sk != 1 and block_rows * packed.rows == k
                        and rows_fit_l1_sets(4 * a_sk, min(chunk, block_rows) * packed.rows,
                                             4 * tokens)),
        "patches": bool(patches), **patch_params, "copy_patches": copy,
        "TILE_GROUP": TILE_GROUP,
    }
    req.take(req.output())
    return params


def token_chunk(packed, n: int, tokens: int, patches: dict | None) -> int:
    """Block rows per K chunk; with patches, chunks never straddle taps."""
    chunk = chunk_block_rows(packed, n, tokens)
    if patches:
        chunk = _divisor_at_most(patches["channels"] // packed.rows, chunk)
    return chunk


COPY_PATCHES_MIN_READS = 5.0
"""A conv's patch rows lie at the tap's shift from X's planes: read in place, most of a tile's
vectors straddle two cache lines and need a masked load for the padding, which cannot fold into
the FMA. Where a column task reads each row at least this many times, the task first copies a
chunk's rows to its scratch, masked once, so that every nonzero reads whole aligned vectors.
Measured on one-layer 3x3 convs (x86-amx and x86-avx2 on the Xeon): at 6.4 reads a row (64
channels, 10 % dense) the layer ran 14 % faster, at 13-51 (128-512 channels) 20-26 % (x86-avx2
19-22 %); at 1.9-3.8 (3-6 % dense) 4-14 % slower (x86-avx2: 3 % faster to 15 % slower)."""


def copies_patches(packed, k: int, n: int, patches: dict | None) -> bool:
    """Whether a patch-reading kernel copies each chunk's rows before its columns read them."""
    reads = packed.num_blocks * packed.rows / max(1, k) / -(-n // COLUMNS_PER_TASK)
    return bool(patches) and reads >= COPY_PATCHES_MIN_READS


def _divisor_at_most(count: int, limit: int) -> int:
    """The largest divisor of count no larger than limit: K chunks that never straddle taps."""
    return max(d for d in range(1, min(count, max(limit, 1)) + 1) if count % d == 0)


def shifted_rows(req: KernelRequest, patches: dict, m: int, tokens: int, lanes: int,
                 chunk: int, block_rows: int) -> dict:
    """What a token-tile kernel needs to read patches from X [1, C, H, W] (absorb_patches),
    or from its stride's phases, [sh * sw][C] planes of h x w = (H / sh) x (W / sw): per tap,
    the element shift of its row from the K row's channel plane, and per token tile and tap,
    one bit per token lane (uint16 per vector) set where the tap reads inside X."""
    c, (h, w) = patches["channels"], patches["plane"]
    (kh, kw), (dh, dw), (sh, sw) = patches["kernel"], patches["dilations"], patches["strides"]
    top, left = patches["pads"][0], patches["pads"][1]
    _out_h, out_w = patches["out"]
    taps = kh * kw
    # Tap (i, j) reads X's row s*y + i*dh - top: phase (i*dh - top) mod s, row y + dy.
    reach_y = np.repeat(np.arange(kh) * dh - top, kw)
    reach_x = np.tile(np.arange(kw) * dw - left, kh)
    dy, dx = reach_y // sh, reach_x // sw
    phase = reach_y % sh * sw + reach_x % sw
    # K row tap * C + channel lies at channel * h * w + shift[tap] from the tile's token 0.
    shift = (phase - np.arange(taps)) * c * h * w + dy * w + dx
    tiles = -(-m // tokens)
    pixel = np.arange(tiles * tokens)
    row, column = pixel // out_w, pixel % out_w
    inside = ((pixel[None, :] < m)
              & (row[None, :] + dy[:, None] >= 0) & (row[None, :] + dy[:, None] < h)
              & (column[None, :] + dx[:, None] >= 0) & (column[None, :] + dx[:, None] < w))
    lane_bits = (1 << np.arange(lanes)).astype(np.uint32)
    bits = inside.reshape(taps, tiles, tokens // lanes, lanes).astype(np.uint32) @ lane_bits
    masks = np.ascontiguousarray(bits.transpose(1, 0, 2)).astype(np.uint16)
    return {"TAPS": taps, "CHUNKS_PER_TAP": c // block_rows // chunk,
            "tap_shift": [int(s) for s in shift], "masks": req.blob.add(masks)}


def spmm_tokens_scratch(graph: Graph, node: Node, tokens: int) -> int:
    """Per token tile (tiles run in parallel, each in its own scratch): the transposed A tile
    (block rows padded; none where the kernel reads patches from X) and the transposed Y
    tile."""
    weight = graph.tensors[node.inputs[1]]
    k, n = weight.shape
    rows = weight.sparsity.packed.rows
    m = dense_rows(graph, node)
    tiles = max(1, -(-m // tokens))
    packed, patches = weight.sparsity.packed, node.attrs.get("patches")
    if copies_patches(packed, k, n, patches):  # a chunk of rows per column task
        a_rows = -(-n // COLUMNS_PER_TASK) * token_chunk(packed, n, tokens, patches) * rows
    else:
        a_rows = 0 if patches else -(-k // rows) * rows
    return tiles * 4 * tokens * (a_rows + n)


PACK_ABOVE_BYTES = 48 * 1024
"""The AVX-512 1x16 kernel packs A when a row tile (MR rows x K floats) exceeds this, about
an L1: measured at MR = 16, K = 768 (48 KB) in place 81 % of peak, packed 71 %; K = 3072 in
place 32 %, packed 82 %."""


def packs_rows(k: int, mr: int) -> bool:
    return 4 * k * mr > PACK_ABOVE_BYTES


def spmm_columns_scratch(graph: Graph, node: Node, mr: int) -> int:
    """Bytes for A packed tile by tile as [tile][K][MR] (the AVX-512 1x16 kernel), if packed."""
    k, _ = graph.tensors[node.inputs[1]].shape
    a = graph.tensors[node.inputs[0]]
    m = a.size // k if k else 0
    return 4 * -(-m // mr) * mr * k if packs_rows(k, mr) else 0


def spmm_columns_params(req: KernelRequest, mr: int) -> dict:
    """1xC-block weight for SIMD kernels that vectorise over a block's C outputs: column-block
    CSR tables, MR rows of A per register tile."""
    node, a, weight = req.node, req.input(0), req.input(1)
    packed = weight.sparsity.packed
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    blocks = -(-n // packed.cols)
    col_ptr, k_idx, values = column_blocks(packed, blocks)
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "NB": blocks, "MR": mr,
        "n_tail": n - (blocks - 1) * packed.cols, "num_blocks": packed.num_blocks,
        "pack": packs_rows(k, mr),
        "col_ptr": req.blob.add(col_ptr), "k_idx": req.blob.add(k_idx),
        "values": req.blob.add(values),
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
        **vector_epilogue_params(node.attrs),
    }
    req.take(req.output())
    return params
