"""What a params function is given for one node: `KernelRequest`, and the weight blob
(`WeightSink`) where it stores the constants it re-lays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor


class WeightSink:
    """Where params functions put packed constants; `add` returns the byte offset."""

    def add(self, array: np.ndarray) -> int:  # pragma: no cover - see emit.WeightBlob
        raise NotImplementedError


@dataclass
class KernelRequest:
    """One node's view for a params function: the graph, the node, and the weight blob.

    `args` collects the tensors the kernel function takes, in parameter order; `checked` marks
    a kernel that validates run-time values and returns non-zero with a message on failure.
    """

    graph: Graph
    node: Node
    blob: WeightSink
    args: list[str] = field(default_factory=list)
    checked: bool = False

    def input(self, index: int) -> Tensor | None:
        names = self.node.inputs
        return self.graph.tensors[names[index]] if index < len(names) and names[index] else None

    def output(self, index: int = 0) -> Tensor:
        return self.graph.tensors[self.node.outputs[index]]

    def take(self, tensor: Tensor | None) -> bool:
        if tensor is None:
            return False
        self.args.append(tensor.name)
        return True
