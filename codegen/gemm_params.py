"""Template parameters for the fp32 dense matrix kernels (templates/f32-gemm): Dense with a
dense or run-time weight, and MatMul with numpy's batching.

The portable kernel reads B where it is; SIMD kernels read a constant weight re-laid at compile
time as panels of 16 or 32 columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.isa import TOKEN_TILE_ISAS
from sparsec.codegen.loops import broadcast_strides
from sparsec.codegen.matrix_common import (
    activation_rows,
    bias_params,
    epilogue_params,
    vector_epilogue_params,
)
from sparsec.codegen.request import KernelRequest
from sparsec.codegen.spmm_params import shifted_rows
from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node, Tensor
from sparsec.compiler.passes.absorb_patches import dense_rows
from sparsec.errors import KernelNotFoundError


def _gemm_tile(req: KernelRequest) -> dict:
    """4 rows x 32 columns of accumulators: 8 independent AVX-512 FMA chains (enough to hide
    FMA latency on two pipes), 16 AVX2 registers; SSE spills some, still the fastest measured
    (benchmarks/kernels.py: 16 columns ran 2.4x slower with AVX-512)."""
    return {"MR": 4, "NT": 32}


def dense_params(req: KernelRequest) -> dict:
    """Dense node, dense weight: Y = act(alpha * op(A) . op(B) + beta * C)."""
    node, a, b = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    trans_b = node.attrs.get("trans_b", 0)
    n = b.shape[0] if trans_b else b.shape[1]
    b_sk, b_sn = (1, k) if trans_b else (n, 1)
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk,
              "b_sk": b_sk, "b_sn": b_sn, "batches": [], **_gemm_tile(req),
              **bias_params(req, m, n), **epilogue_params(req, node.attrs, a.dtype)}
    req.take(req.output())
    return params


PREFETCH_AHEAD_FMAS = 192
"""How far ahead, in FMAs, the AVX-512 panel GEMM prefetches a feature-major A: a k step is 2*MR
FMAs, at 2 a cycle 96 cycles ahead, about a load from L3. On x86-amx native, ResNet-50's
dense 3x3 and 1x1 convs at 56x56 (one-layer models, same run) went from 0.45x and 0.62x
onnxruntime to 0.62x and 0.82x. The AVX2 GEMM showed no change from it (x86-avx2 run on the
same host), so it has none."""


def gemm_panels_params(req: KernelRequest, mr: int, panel: int, isa: str = "",
                       channels: int = 0, tokens_isa: str = "") -> dict:
    """Dense node with a constant dense weight for SIMD kernels: B re-laid at compile time as
    [N / panel][K][panel] so each k step loads one contiguous panel row. `isa`: the x86
    template's vector ISA (NEON's template names its own). `channels`: the row also writes a
    feature-major output, through gemm_tokens_params with blocks of that many channels, on
    `tokens_isa` (default `isa`)."""
    if channels and req.output().layout == FEATURE_MAJOR:
        return {"tokens": True, **gemm_tokens_params(req, channels, tokens_isa or isa)}
    if req.node.attrs.get("patches"):
        raise KernelNotFoundError(
            f"node {req.node.name!r}: absorb_patches gave conv patches to a dense layer whose "
            "output stayed row-major, where its panel GEMM cannot read them; this is a sparsec "
            "bug (please report it with the model); sparsec.compile(..., layouts=False) "
            "avoids it")
    node, a, weight = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    panels = -(-n // panel)
    padded = np.zeros((k, panels * panel), np.float32)
    padded[:, :n] = weight.data
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "MR": mr, "panels": panels,
        "prefetch_steps": PREFETCH_AHEAD_FMAS // (2 * mr) if isa == "avx512f" else 0,
        # A (m x k) larger than B (k x padded n): stream A once, each row tile passing every
        # panel while it sits in L1, and keep B in cache (panel by panel streamed A once per
        # panel). ResNet-50 90 % on x86-amx 4 % faster, dense on x86-avx2 3 %, MobileNet-v1
        # dense 2 %; a transformer's A (128 tokens) is smaller than its B and keeps the order.
        "tile_major": m > panels * panel,
        "n_tail": n - (panels - 1) * panel,
        "packed": req.blob.add(padded.reshape(k, panels, panel).transpose(1, 0, 2)),
        **bias_params(req, m, n), **epilogue_params(req, node.attrs, "float32"),
        **vector_epilogue_params(node.attrs),
    }
    if isa:
        params["isa"] = TOKEN_TILE_ISAS[isa].template_names()
    params.update(tokens=False, takes_scratch=bool(channels))
    req.take(req.output())
    return params


TOKEN_VECTORS = {"avx2": 2, "avx512f": 3, "neon": 2}
"""Token vectors per tile of the feature-major GEMM (f32-gemm/x86-tokens.c.j2), by ISA. AVX2:
6 channels a block (codegen/kernels.py), 12 accumulators, 2 token vectors and a weight in 15
of 16 registers; NEON: 12 channels, 27 of 32. AVX-512: 8 channels by 3 vectors (48 tokens),
24 accumulators and 11 loads a k step in 28 of 32 registers. Its 12 x 2 had 14 loads a step
and left a third of a block idle on the 64-channel convs (72 computed); 8 x 3 took dense
ResNet-50 from 0.78x to 0.85x onnxruntime's speed and ResNet-style one-layer convs 2-11 %
faster (x86-amx, Intel Xeon with AVX-512, 1 thread, same-process runs)."""

MAX_SLOTS = 32
"""Parallel tasks of the feature-major GEMM at most (its kernel takes about 4 a thread), each
packing tiles into its own scratch (a slot of K x tokens floats, reused tile after tile while
it is in cache); a layer with fewer tiles gets a slot per tile and share of its channels."""


TILE_CHUNK_BYTES = {"avx512f": 24 << 10}
"""Walked tile by tile, K in chunks of a packed tile at most this many bytes, by ISA (none
listed: one chunk of all K): a chunk stays in L1 while every channel block reads it, the
blocks' sums waiting in Y between chunks. AVX-512's 48-token tile is 192 bytes a K row, so
a 3x3 conv's packed tile (K = 576-4608) passes L1 several times over and every block read
it from L2: chunked (128 rows), ResNet-50's 56x56 3x3 conv went from 0.86x to 1.04x
onnxruntime's speed (one-layer models, x86-amx, 1 thread), 64 and 256 rows measured
slower. On AVX2 (16 tokens, 64 bytes a row) K chunks without the channel walk measured
2-8 % slower on a Zen 3, so it keeps one chunk."""

WEIGHT_PREFETCH_ROWS = 256
"""Walking channel blocks (walk_channels), the K rows of packed weights ahead that each block
prefetches into L1 as it goes: there the weights come from L3 once, block after block in the
order they lie, and the hardware prefetchers fell behind. Measured on the Xeon (x86-amx, one
layer, alternating builds): ResNet-50's 7x7 3x3 conv 1.95 -> 1.73 ms (0.93x -> 1.05x
onnxruntime), its 14x14 one 3 % faster; 128 rows ahead measured about the same in-model and
512 no better. Walked tile by tile, the weights stay in L2 and no prefetch measured better
than noise."""

CHANNEL_TAIL_TOKENS = {"avx2": 2, "avx512f": 6, "neon": 2}
"""A last tile of at most this many tokens runs with its channels on the lanes (x86), by ISA.
AVX2: with one token (7x7 maps: 49 = 3 * 16 + 1) the token vector wasted 7 of 8 lanes; at 3
or more tokens the 4-way sums' loads and broadcasts cost about what they save. AVX-512: a
token vector of a last tile does 8 FMAs a k step for its 8 channels whatever its tokens, the
channel lanes one a token, so up to 6 tokens (24 sums) run on the lanes: a 14x14 map's last 4
tokens of 48 made its convs 3-6 % faster (one-layer models, x86-amx), dense ResNet-50 and
MobileNet-v1 1 % in the same process."""

CACHED_WEIGHT_BYTES = 256 << 10
"""Weights up to this size stay in L2 from one token tile to the next."""

WALK_CHANNELS_TILES = {"avx2": 4, "avx512f": 16, "neon": 4}
"""Larger weights on a map of at most this many token tiles, by ISA (7x7: 3 tiles and a
token on AVX2) are walked by channel block: every tile packed first, then each block's weights read
once over all tiles, K in chunks. Walked tile by tile, ResNet-50's 7x7 3x3 convs (9.4 MB of
weights) read them from L3 or memory once a tile, the last tile's one token included: 0.85x
onnxruntime's time there, 0.99x by channel block (x86-avx2, one-layer models with caches
flushed between runs). At 14x14 (13 tiles) by block ran 3-10 % slower than by tile: the
tiles' chunks then stream from L2 at 64 bytes a k where a tile's weights streamed from L3
at 24. AVX-512, on an Intel Xeon (2 MB of L2 a core), gains from the walk up to 28x28 (17
tiles of 48 tokens): dense ResNet-50 0.79x -> 0.85x onnxruntime's speed on 1 thread, its
14x14 3x3 convs (2.4 MB of weights over 5 tiles) 0.70x -> 0.86x; walking the 56x56 maps
too measured the same. Once the walk prefetched its weights (WEIGHT_PREFETCH_ROWS), 28x28
(17 tiles, K chunks of 77 rows) ran faster by tile again: a one-layer 3x3 conv 0.87x ->
0.98x, dense ResNet-50 1-2 % on 1 thread (both orders) and 4 % on 2; so AVX-512 walks up to
16 tiles (14x14)."""

CHUNK_TILES_BYTES = 256 << 10
"""A K chunk of every tile at most (bytes), within L2 beside the weights it meets."""

CHUNK_ROWS = 512
"""K rows a chunk at most: a channel block's chunk of weights (AVX2: 512 x 6 floats, 12 KB)
stays in L1 while the tiles pass it. One chunk of all K (the tiles then in L3) ran 2-7 %
slower on ResNet-50's and MobileNet-v1's 7x7 convs."""


@dataclass(frozen=True)
class TokensShape:
    """How the feature-major GEMM walks a node: `tokens` a tile; by tile (each task packing
    its tiles into its own of `slots` slots) or, with `walk_channels`, by channel block over
    every tile packed first, K in `chunks` chunks of `chunk` rows."""

    tokens: int
    tiles: int
    walk_channels: bool
    chunk: int
    chunks: int
    slots: int


def gemm_tokens_shape(graph: Graph, node: Node, isa: str, channels: int) -> TokensShape:
    """The walk of the feature-major GEMM for `node` with blocks of `channels` channels (see
    WALK_CHANNELS_TILES)."""
    tokens = TOKEN_VECTORS[isa] * TOKEN_TILE_ISAS[isa].lanes
    tiles = max(1, -(-dense_rows(graph, node) // tokens))
    k, n = graph.tensors[node.inputs[1]].shape
    blocks = -(-n // channels)
    packed = tiles * k * tokens * 4
    if 1 < tiles <= WALK_CHANNELS_TILES[isa] and k * n * 4 > CACHED_WEIGHT_BYTES:
        chunks = max(-(-packed // CHUNK_TILES_BYTES), -(-k // CHUNK_ROWS))
        return TokensShape(tokens, tiles, True, -(-k // chunks), chunks, 1)
    rows = TILE_CHUNK_BYTES.get(isa, 0) // (4 * tokens) or k  # by tile, K chunks in L1
    chunks = -(-k // rows)
    return TokensShape(tokens, tiles, False, -(-k // chunks), chunks,
                       max(1, min(MAX_SLOTS, tiles * blocks)))


def tokens_pay_off(graph: Graph, node: Node, isa: str) -> bool:
    """Whether the dense row's feature-major form (f32-gemm/x86-tokens.c.j2) may run `node`:
    its activations are feature-major already (a conv's channels-first data) and make at
    least a whole tile of tokens. From row-major activations the panel form is faster: dense
    MiniLM's FFN pair went 35.5 -> 42.4 ms (x86-avx2, Zen 3) when the first wrote
    feature-major for the second, transposing its input. On fewer tokens than a tile (a
    squeeze-excite block's 1x1 convs on one pixel) the token lanes would run mostly empty,
    where the panel form puts output channels on the lanes."""
    tokens = TOKEN_VECTORS[isa] * TOKEN_TILE_ISAS[isa].lanes
    return (graph.tensors[node.inputs[0]].layout == FEATURE_MAJOR
            and dense_rows(graph, node) >= tokens)


def gemm_tokens_params(req: KernelRequest, channels: int, isa: str) -> dict:
    """Dense node with a constant dense weight whose output is feature-major: W re-laid as
    [N / channels][K][channels], each k step's weights of a channel block contiguous."""
    node, a, weight = req.node, req.input(0), req.input(1)
    patches = node.attrs.get("patches")
    k, n = weight.shape
    if patches:  # absorb_patches: A's rows are X's channel planes, shifted per tap
        m, a_sm, a_sk = dense_rows(req.graph, node), 1, patches["plane"][0] * patches["plane"][1]
    else:
        m, k, a_sm, a_sk = activation_rows(a, node.attrs.get("trans_a", 0))
    shape = gemm_tokens_shape(req.graph, node, isa, channels)
    tokens = shape.tokens
    blocks = -(-n // channels)
    padded = np.zeros((k, blocks * channels), np.float32)
    padded[:, :n] = weight.data
    names = TOKEN_TILE_ISAS[isa].template_names()
    patch_params = {}
    if patches:
        patch_params = shifted_rows(req, patches, m, tokens, names["lanes"], 1, 1)
    req.take(a)
    params = {
        "isa": names, "M": m, "K": k, "N": n, "NR": channels, "V": TOKEN_VECTORS[isa],
        "a_sm": a_sm, "a_sk": a_sk, "SLOTS": shape.slots,
        "KC": shape.chunk, "walk_channels": shape.walk_channels,
        # L floats past the end: the channel-lane tail loads a whole vector at the last k.
        "packed": req.blob.add(np.concatenate([
            padded[k0:k0 + shape.chunk].reshape(-1, blocks, channels).transpose(1, 0, 2).ravel()
            for k0 in range(0, k, shape.chunk)] + [np.zeros(names["lanes"], np.float32)])),
        "CHANNEL_TAIL_TOKENS": CHANNEL_TAIL_TOKENS[isa],
        "WEIGHT_PREFETCH_ROWS": WEIGHT_PREFETCH_ROWS,
        **bias_params(req, m, n),
        "residual": req.take(req.input(3)),  # absorb_residual: after the bias, in this order
        **epilogue_params(req, node.attrs, "float32"), **vector_epilogue_params(node.attrs),
        "patches": bool(patches), **patch_params,
    }
    req.take(req.output())
    return params


def gemm_tokens_scratch(graph: Graph, node: Node, isa: str, channels: int) -> int:
    """Bytes of the feature-major GEMM's packed tiles, a slot per parallel task; none where
    the row's output is row-major (the panel kernel runs)."""
    if graph.tensors[node.outputs[0]].layout != FEATURE_MAJOR:
        return 0
    shape = gemm_tokens_shape(graph, node, isa, channels)
    k, n = graph.tensors[node.inputs[1]].shape
    partial_tile = shape.chunks > 1 and dense_rows(graph, node) % shape.tokens
    sums = -(-n // channels) * channels * shape.tokens if partial_tile else 0
    if not shape.walk_channels:
        return 4 * (shape.slots * shape.tokens * shape.chunk + sums)
    return 4 * (shape.tiles * k * shape.tokens + sums)


def matmul_batches(a: Tensor, b: Tensor) -> tuple[int, int, int, list]:
    """numpy.matmul's M, K, N (1-D operands promoted) and, per broadcast batch, the element
    offsets (A, B, Y)."""
    a_shape = (1,) + a.shape if len(a.shape) == 1 else a.shape
    b_shape = b.shape + (1,) if len(b.shape) == 1 else b.shape
    m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
    batch_shape = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    a_batch = broadcast_strides(a_shape[:-2], batch_shape)
    b_batch = broadcast_strides(b_shape[:-2], batch_shape)
    batches = [(sum(i * s for i, s in zip(index, a_batch)) * m * k,
                sum(i * s for i, s in zip(index, b_batch)) * k * n, position * m * n)
               for position, index in enumerate(np.ndindex(*batch_shape))]
    return m, k, n, batches


def matmul_params(req: KernelRequest) -> dict:
    """numpy.matmul: 1-D operands promoted, batch dimensions broadcast."""
    a, b, y = req.input(0), req.input(1), req.output()
    m, k, n, batches = matmul_batches(a, b)
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": k, "a_sk": 1,
              "b_sk": n, "b_sn": 1, "batches": batches if len(batches) > 1 else [],
              **_gemm_tile(req),
              "has_bias": False, **epilogue_params(req, {}, a.dtype)}
    req.take(y)
    return params
