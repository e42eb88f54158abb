"""Template parameters for the matrix kernels (Dense and MatMul), computed per node.

Weights are re-laid here at compile time in the form each kernel walks: block-CSR by rows for
the portable kernel, by columns for SIMD kernels, 32-column panels for the dense SIMD GEMM.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.activations import VECTOR_MATH, activation_statements
from sparsec.codegen.c_literals import CTYPES, c_float, c_literal
from sparsec.codegen.isa import TOKEN_TILE_ISAS
from sparsec.codegen.loops import broadcast_strides, contiguous_strides
from sparsec.codegen.packing import column_blocks
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import FEATURE_MAJOR, Graph, Node, Tensor
from sparsec.errors import KernelNotFoundError


def _bias(req: KernelRequest, rows: int, cols: int) -> dict:
    """Per-element bias strides for C broadcast to rows x cols (Gemm semantics)."""
    bias = req.input(2)
    if not req.take(bias):
        return {"has_bias": False}
    shape = (1, 1) + tuple(bias.shape)
    bias_rows, bias_cols = shape[-2], shape[-1]
    if (bias.size != bias_rows * bias_cols or bias_rows not in (1, rows)
            or bias_cols not in (1, cols)):
        raise KernelNotFoundError(f"node {req.node.name!r}: bias of shape {bias.shape} does not "
                                  f"broadcast to {rows}x{cols}")
    return {"has_bias": True, "bias_sm": bias_cols if bias_rows > 1 else 0,
            "bias_sn": 1 if bias_cols > 1 else 0}


def _epilogue(req: KernelRequest, attrs: dict, dtype: str) -> dict:
    ctype = CTYPES[dtype]
    return {"alpha": c_float(attrs.get("alpha", 1.0), ctype),
            "scale_by_alpha": float(attrs.get("alpha", 1.0)) != 1.0,
            "beta": c_float(attrs.get("beta", 1.0), ctype),
            "activation": activation_statements(
                attrs.get("activation", ""),
                tuple(c_literal(b, dtype) for b in attrs.get("activation_params", ())), dtype,
                "v")}


def _gemm_tile(req: KernelRequest) -> dict:
    """4 rows x 32 columns of accumulators: 8 independent AVX-512 FMA chains (enough to hide
    FMA latency on two pipes), 16 AVX2 registers; SSE spills some, still the fastest measured
    (benchmarks/kernels.py: 16 columns ran 2.4x slower with AVX-512)."""
    return {"MR": 4, "NT": 32}


def _activation_rows(a: Tensor, trans_a: int) -> tuple[int, int, int, int]:
    """Rows M and depth K of a Dense input, with its element strides: a transposed 2-D A
    (Gemm transA) is K x M; otherwise leading dimensions fold into rows."""
    if trans_a:
        k, m = a.shape
        return m, k, 1, m
    k = a.shape[-1]
    m = a.size // k if k else int(np.prod(a.shape[:-1]))
    return m, k, k, 1


def dense_params(req: KernelRequest) -> dict:
    """Dense node, dense weight: Y = act(alpha * op(A) . op(B) + beta * C)."""
    node, a, b = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    trans_b = node.attrs.get("trans_b", 0)
    n = b.shape[0] if trans_b else b.shape[1]
    b_sk, b_sn = (1, k) if trans_b else (n, 1)
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk,
              "b_sk": b_sk, "b_sn": b_sn, "batches": [], **_gemm_tile(req), **_bias(req, m, n),
              **_epilogue(req, node.attrs, a.dtype)}
    req.take(req.output())
    return params


def gemm_panels_params(req: KernelRequest, mr: int, panel: int) -> dict:
    """Dense node with a constant dense weight for SIMD kernels: B re-laid at compile time as
    [N / panel][K][panel] so each k step loads one contiguous panel row."""
    node, a, weight = req.node, req.input(0), req.input(1)
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = weight.shape[1]
    panels = -(-n // panel)
    padded = np.zeros((k, panels * panel), np.float32)
    padded[:, :n] = weight.data
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "a_sm": a_sm, "a_sk": a_sk, "MR": mr, "panels": panels,
        "n_tail": n - (panels - 1) * panel,
        "packed": req.blob.add(padded.reshape(k, panels, panel).transpose(1, 0, 2)),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    req.take(req.output())
    return params


def _matmul_batches(a: Tensor, b: Tensor) -> tuple[int, int, int, list]:
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
    m, k, n, batches = _matmul_batches(a, b)
    req.take(a)
    req.take(b)
    params = {"ctype": CTYPES[a.dtype], "M": m, "K": k, "N": n, "a_sm": k, "a_sk": 1,
              "b_sk": n, "b_sn": 1, "batches": batches if len(batches) > 1 else [],
              **_gemm_tile(req),
              "has_bias": False, **_epilogue(req, {}, a.dtype)}
    req.take(y)
    return params


def matmul_integer_params(req: KernelRequest) -> dict:
    """MatMulInteger: numpy.matmul batching; zero points per tensor, per row of A or per
    column of B."""
    a, b, y = req.input(0), req.input(1), req.output()
    m, k, n, batches = _matmul_batches(a, b)
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


def spmm_params(req: KernelRequest) -> dict:
    """Dense node with a block-sparse weight: the pattern's tables go into the weight blob."""
    node, a = req.node, req.input(0)
    packed = req.input(1).sparsity.packed
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    n = req.input(1).shape[1]
    rows, cols = packed.rows, packed.cols
    req.take(a)
    params = {
        "M": m, "K": k, "N": n, "R": rows, "C": cols, "a_sm": a_sm, "a_sk": a_sk,
        "KB": -(-k // rows), "NB": -(-n // cols), "k_tail": k - (-(-k // rows) - 1) * rows,
        "n_tail": n - (-(-n // cols) - 1) * cols, "MR": 4, "num_blocks": packed.num_blocks,
        "row_ptr": req.blob.add(packed.row_ptr), "col_idx": req.blob.add(packed.col_idx),
        "values": req.blob.add(packed.values),
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
    }
    req.take(req.output())
    return params


# K chunking of the token-tile kernels: rows of the transposed A tile per chunk at 64 tokens
# (64 rows x 64 tokens x 4 bytes = 16 KB, half an L1), and output columns per parallel task
# (the columns that share each chunk while it is in L1). A column loads and stores its
# accumulators once per chunk; where the weight is so sparse that a column has fewer than
# MIN_BLOCKS_PER_CHUNK blocks in a chunk, that overhead rivals the FMAs, so the chunk grows up
# to MAX_TILE_ROWS (32 KB, still inside a 48 KB L1): MiniLM's 90 % 4x1 layers ran 10-15 %
# faster (benchmarks/e2e.py).
L1_TILE_ROWS = 64
MAX_TILE_ROWS = 128
MIN_BLOCKS_PER_CHUNK = 4
COLUMNS_PER_TASK = 128


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
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
    if a.layout == FEATURE_MAJOR:  # choose_layouts: the producer wrote A^T (K x M)
        a_sm, a_sk = 1, m
    n = weight.shape[1]
    col_ptr, k_idx, values = column_blocks(packed, n)
    block_rows = packed.row_ptr.size - 1
    lanes = TOKEN_TILE_ISAS[isa].lanes
    chunk = chunk_block_rows(packed, n, tokens)
    chunks = max(1, -(-block_rows // chunk))
    per_task = -(-COLUMNS_PER_TASK // lanes) * lanes
    tasks = -(-n // per_task)
    # Blocks in the order the kernel walks them: by task (column range), K chunk, column,
    # then block row; segment s = (task * chunks + chunk) * per_task + column in the task.
    columns = np.repeat(np.arange(n), np.diff(col_ptr))
    segment = ((columns // per_task * chunks + k_idx // chunk) * per_task
               + columns % per_task)
    order = np.argsort(segment, kind="stable")
    segment_ptr = np.zeros(tasks * chunks * per_task + 1, np.int32)
    np.cumsum(np.bincount(segment, minlength=tasks * chunks * per_task), out=segment_ptr[1:])
    k_idx, values = k_idx[order], values[order]
    req.take(a)
    params = {
        "isa": TOKEN_TILE_ISAS[isa].template_names(), "KC": chunk, "CHUNKS": chunks,
        "CT": per_task, "segment_ptr": req.blob.add(segment_ptr),
        "M": m, "K": k, "N": n, "R": packed.rows, "KB": packed.row_ptr.size - 1, "T": tokens,
        "a_sm": a_sm, "a_sk": a_sk, "num_blocks": packed.num_blocks,
        "col_ptr": req.blob.add(col_ptr), "k_idx": req.blob.add(k_idx),
        "values": req.blob.add(values), **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
        "y_feature_major": req.output().layout == FEATURE_MAJOR,
    }
    req.take(req.output())
    return params


def spmm_tokens_scratch(graph: Graph, node: Node, tokens: int) -> int:
    """Per token tile (tiles run in parallel, each in its own scratch): the transposed A tile
    (block rows padded) and the transposed Y tile."""
    weight = graph.tensors[node.inputs[1]]
    k, n = weight.shape
    rows = weight.sparsity.packed.rows
    m = graph.tensors[node.inputs[0]].size // k if k else 0
    tiles = max(1, -(-m // tokens))
    return tiles * 4 * tokens * (-(-k // rows) * rows + n)


def _vector_epilogue(attrs: dict, dtype: str = "float32") -> dict:
    """The fused activation on whole vectors in SIMD epilogues: Relu and Clip as min/max, the
    others through runtime_c/sparsec_vmath.h, whose functions return what the scalar
    statements (`activation`, for tails and portable C) return, bit for bit."""
    activation = attrs.get("activation", "")
    if activation == "Relu":
        return {"vector_activation": "relu"}
    if activation == "Clip":
        low, high = (c_literal(b, dtype) for b in attrs["activation_params"])
        return {"vector_activation": "clip", "low": low, "high": high}
    if activation and activation not in VECTOR_MATH:
        raise KernelNotFoundError(f"no vector form of the fused activation {activation!r}")
    return {"vector_activation": VECTOR_MATH.get(activation, "")}


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
    m, k, a_sm, a_sk = _activation_rows(a, node.attrs.get("trans_a", 0))
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
        **_bias(req, m, n), **_epilogue(req, node.attrs, "float32"),
        **_vector_epilogue(node.attrs),
    }
    req.take(req.output())
    return params




def _permuted_view(tensor: Tensor, perm) -> tuple[tuple[int, ...], list[int]]:
    """Shape and element strides of transpose(tensor, perm), read in place."""
    strides = contiguous_strides(tensor.shape)
    if perm is None:
        return tensor.shape, strides
    return tuple(tensor.shape[p] for p in perm), [strides[p] for p in perm]


def _written_view(tensor: Tensor, perm) -> tuple[tuple[int, ...], list[int]]:
    """Shape and strides of the result R whose transpose(R, perm) is `tensor`."""
    strides = contiguous_strides(tensor.shape)
    if perm is None:
        return tensor.shape, strides
    inverse = np.argsort(perm)
    return tuple(tensor.shape[i] for i in inverse), [strides[i] for i in inverse]


def _batch_offset(position: tuple[int, ...], strides: list[int]) -> int:
    return sum(i * s for i, s in zip(position, strides))


def _attention_blocks(vectors: int, registers: int) -> tuple[int, int, int, int]:
    """Query rows a task (6 or 8: their scores stay in L1 between the two products) and the
    register blocks of the two products, for D = `vectors` vectors and `registers` accumulator
    registers: scores in blocks of rows x 2 vectors of keys (B's two loads and a row's
    broadcast per step); the context in blocks of rows x up to 4 vectors of columns (V's loads
    shared by the rows). Row blocks divide the task's rows, so every block is whole (rows past
    M repeat the last row). The task's rows are those whose smaller block holds the most
    accumulators: 6 where 16 registers fit 3 x 4 but not 4 x 4 (AVX2), 8 elsewhere."""
    columns = max(c for c in (1, 2, 4) if vectors % c == 0) if vectors else 1

    def blocks(rows: int) -> tuple[int, int]:
        def within(width: int) -> int:
            return max(d for d in range(1, rows + 1) if rows % d == 0
                       and (d * width <= registers or d == 1))
        return within(2), within(columns)

    def accumulators(rows: int) -> int:
        scores, context = blocks(rows)
        return min(2 * scores, columns * context)

    rows = max((8, 6), key=accumulators)  # ties keep 8
    return (rows, *blocks(rows), columns)


def attention_params(req: KernelRequest, vector: int, registers: int) -> dict:
    """Fused attention on `vector`-float vectors; the context product keeps MR x D/vector
    accumulators within `registers` vector registers (the rest hold V's row and a broadcast).
    Q, V and the output may be transposed views (fuse folded the head Transposes in)."""
    attrs = req.node.attrs
    a_shape, a_strides = _permuted_view(req.input(0), attrs.get("a_perm"))
    b_shape, b_strides = _permuted_view(req.input(1), None)
    v_shape, v_strides = _permuted_view(req.input(2), attrs.get("v_perm"))
    y_shape, y_strides = _written_view(req.output(), attrs.get("y_perm"))
    mask = req.input(3)
    m, k, n, d = a_shape[-2], a_shape[-1], b_shape[-1], v_shape[-1]
    if b_strides[-1] != 1 or v_strides[-1] != 1 or y_strides[-1] != 1:
        raise KernelNotFoundError(f"node {req.node.name!r}: attention needs K^T, V and the "
                                  "output contiguous along their last axis")
    batch_shape = a_shape[:-2]
    mask_shape = (1,) * (len(y_shape) - len(mask.shape)) + mask.shape if mask else None
    mask_batch = broadcast_strides(mask_shape[:-2], batch_shape) if mask else ()
    mask_rows, mask_cols = (mask_shape[-2], mask_shape[-1]) if mask else (1, 1)
    offsets = [(_batch_offset(position, a_strides), _batch_offset(position, b_strides),
                _batch_offset(position, v_strides),
                _batch_offset(position, mask_batch) * mask_rows * mask_cols if mask else 0,
                _batch_offset(position, y_strides))
               for position in np.ndindex(*batch_shape)]
    for tensor in (req.input(0), req.input(1), req.input(2), mask):
        req.take(tensor)
    req.take(req.output())
    scale = c_float(attrs.get("scale", 1.0))
    rows, scores_rows, context_rows, context_vectors = _attention_blocks(d // vector, registers)
    return {"VL": vector, "MR": rows, "RS": scores_rows, "RC": context_rows,
            "CW": context_vectors, "M": m, "K": k, "N": n,
            "D": d, "offsets": offsets, "a_sm": a_strides[-2], "a_sk": a_strides[-1],
            "b_sk": b_strides[-2], "v_sn": v_strides[-2], "y_sm": y_strides[-2],
            "has_mask": mask is not None, "nan_to_zero": bool(attrs.get("nan_to_zero")),
            "mask_sm": mask_cols if mask_rows > 1 else 0, "mask_sn": 1 if mask_cols > 1 else 0,
            "scale": {"Mul": f"t * {scale}", "Div": f"t / {scale}", "": ""}[
                attrs.get("scale_op", "")]}
