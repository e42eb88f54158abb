"""sparsec's graph IR: plain dataclasses that print themselves as stable text.

A `Graph` owns its tensors by name and lists its nodes in topological order. Names come from the
model and are untrusted: they are dictionary keys and message text here, never C identifiers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsec.compiler.patterns import Pattern

# ONNX element type numbers for the dtypes sparsec represents.
DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",  # graph inputs and outputs only: compiler/float16.py casts them at the edge
    11: "float64",
    12: "uint32",
    13: "uint64",
}

FEATURE_MAJOR = "feature-major"
"""Layout of an activation stored transposed: features outermost, tokens contiguous."""

SPARSE_PATTERNS = tuple(Pattern(p) for p in ("1x1", "4x1", "1x4", "1x16", "16x1", "4x4"))
"""Candidate block shapes RxC over a K x N weight: R consecutive input rows x C output columns.
A target's cost model may offer others (x86-amx's int8 kernel skips 4x16 blocks); those are
counted too, for the weights it prices. BITMASK (compiler/patterns.py) is a stored form, not a
block shape, offered where the cost model prices it."""


@dataclass
class PackedBlocks:
    """Block-compressed-sparse-row form of a K x N weight with R x C blocks.

    Block row `i` (input rows i*R .. i*R+R-1) owns blocks `row_ptr[i]:row_ptr[i+1]`; block `j`
    covers output columns `col_idx[j]*C ..` and its values are `values[j]` (R x C, zero padded
    past K or N).
    """

    rows: int
    cols: int
    row_ptr: np.ndarray
    col_idx: np.ndarray
    values: np.ndarray

    @property
    def num_blocks(self) -> int:
        return int(self.col_idx.shape[0])


@dataclass
class SparsityInfo:
    """What detect_sparsity learned about one weight, and what it chose."""

    density: float
    # pattern -> Pattern.count: (nonzero blocks, fill); BITMASK: (nonzero elements, density)
    block_stats: dict[Pattern, tuple[int, float]]
    pattern: Pattern  # DENSE, one of SPARSE_PATTERNS, a block shape the cost model offered, BITMASK
    reason: str
    packed: PackedBlocks | None = None


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None
    layout: str = "row-major"  # or FEATURE_MAJOR: a [.., K] activation stored as K x rows
    sparsity: SparsityInfo | None = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # Python ints: a hostile shape cannot wrap around

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Node:
    op: str
    inputs: list[str]  # "" marks an omitted optional input, as in ONNX
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the model's node name, for messages only
    # Set by select_kernels: the kernel table row that runs this node, and the rows the
    # library also carries for it as (CPU feature, key), the first fitting one called instead.
    kernel: str = ""
    dispatch: tuple[tuple[str, str], ...] = ()


@dataclass
class MemoryPlan:
    """Byte offsets into one arena for every intermediate tensor; sized once, reused every run."""

    offsets: dict[str, int]
    arena_bytes: int
    alignment: int
    scratch: dict[int, tuple[int, int]] = field(default_factory=dict)  # node -> (offset, bytes)


@dataclass
class Graph:
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    tensors: dict[str, Tensor]
    opset: int = 0
    memory: MemoryPlan | None = None

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def copy(self) -> Graph:
        """A copy whose node and tensor records can be edited without touching this graph.

        Constant arrays are shared: passes replace them, they never write into them.
        """
        return Graph(
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            nodes=[dataclasses.replace(n, inputs=list(n.inputs), outputs=list(n.outputs),
                                       attrs=dict(n.attrs)) for n in self.nodes],
            tensors={k: dataclasses.replace(t) for k, t in self.tensors.items()},
            opset=self.opset,
            memory=self.memory,
        )

    def remove_unused(self) -> None:
        """Drop tensors no node, input or output refers to (e.g. folded constants)."""
        used = set(self.inputs) | set(self.outputs)
        for node in self.nodes:
            used.update(n for n in node.inputs if n)
            used.update(n for n in node.outputs if n)
        self.tensors = {k: t for k, t in self.tensors.items() if k in used}

    def to_text(self) -> str:
        """The graph as compiler/ir_text.py writes it (`--dump-ir`, pass tests)."""
        from sparsec.compiler.ir_text import format_graph

        return format_graph(self)


def is_layout_flip(graph: Graph, node: Node) -> bool:
    """A Transpose of a 2-D matrix whose input and output differ in layout: both are stored
    in the same byte order, so the node copies nothing."""
    if node.op != "Transpose" or not node.inputs or not node.outputs:
        return False
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    return (len(x.shape) == 2 and list(node.attrs.get("perm") or [1, 0]) == [1, 0]
            and x.layout != y.layout)
