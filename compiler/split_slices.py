"""Split as one Slice per output: the parts are contiguous ranges of one axis, which the Slice
kernel copies. torch's default (dynamo) exporter writes `Tensor.chunk` and `torch.split` as
Split (ShuffleNet's channel split, a fused QKV projection's three heads); the TorchScript
exporter wrote Slices.

Runs at import, once shapes are static: every part's size is known then, from the `split`
input (opset 13 on), the `split` attribute (before 13), `num_outputs` (opset 18: parts of
ceil(dim / n), the last smaller), or else equal parts, one per output.
"""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor
from sparsec.errors import FrontendError, UnsupportedOperatorError


def lower(graph: Graph) -> None:
    """Replace every Split node of `graph` by Slices over its input, in place."""
    nodes = []
    for node in graph.nodes:
        nodes.extend(_slices(graph, node) if node.op == "Split" else [node])
    graph.nodes = nodes


def _slices(graph: Graph, node: Node) -> list[Node]:
    x = graph.tensors[node.inputs[0]]
    rank = len(x.shape)
    axis = node.attrs.get("axis", 0)
    if not isinstance(axis, int) or not -rank <= axis < rank:
        raise FrontendError(f"node {node.name!r} (op Split): axis {axis!r} is outside the "
                            f"input's {rank} axes")
    axis %= rank
    sizes = _sizes(graph, node, x.shape[axis])
    slices = []
    start = 0
    for index, (output, size) in enumerate(zip(node.outputs, sizes)):
        if output:
            bounds = [_constant(graph, f"{node.name}/part{index}/{what}", value)
                      for what, value in (("starts", start), ("ends", start + size),
                                          ("axes", axis))]
            slices.append(Node("Slice", [node.inputs[0], *bounds], [output], {},
                               f"{node.name}/part{index}"))
        start += size
    return slices


def _sizes(graph: Graph, node: Node, dim: int) -> list[int]:
    """Each output's extent along the axis, checked to add up to the input's."""
    parts = len(node.outputs)
    split_input = node.inputs[1] if len(node.inputs) > 1 else ""
    if split_input:
        tensor = graph.tensors[split_input]
        if not tensor.is_constant:
            raise UnsupportedOperatorError(
                f"node {node.name!r} (op Split): its split sizes ({split_input!r}) are "
                "computed at run time; sparsec needs them constant (export with static "
                "shapes, or run onnxsim on the model)")
        sizes = [int(v) for v in np.asarray(tensor.data).ravel()]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    elif "num_outputs" in node.attrs:
        count = node.attrs["num_outputs"]
        if not isinstance(count, int) or count != parts:
            raise FrontendError(f"node {node.name!r} (op Split): num_outputs {count!r} but "
                                f"{parts} outputs")
        chunk = -(-dim // count)
        sizes = [min(chunk, max(0, dim - i * chunk)) for i in range(count)]
    else:
        if dim % parts:
            raise FrontendError(f"node {node.name!r} (op Split): {dim} does not split into "
                                f"{parts} equal parts")
        sizes = [dim // parts] * parts
    if len(sizes) != parts or any(s < 0 for s in sizes) or sum(sizes) != dim:
        raise FrontendError(f"node {node.name!r} (op Split): sizes {sizes} do not split an "
                            f"axis of {dim} into {parts} outputs")
    return sizes


def _constant(graph: Graph, name: str, value: int) -> str:
    """A 1-element int64 constant named after `name`, made unique among the graph's tensors."""
    unique, suffix = name, 0
    while unique in graph.tensors:
        suffix += 1
        unique = f"{name}#{suffix}"
    graph.tensors[unique] = Tensor(unique, (1,), "int64", np.array([value], np.int64))
    return unique
