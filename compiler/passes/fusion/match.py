"""Shape and value tests the fusion rules share."""

from __future__ import annotations

import numpy as np

from sparsec.compiler.ir import Graph, Node


def is_constant(graph: Graph, name: str | None, value: float) -> bool:
    """A scalar constant equal to `value` rounded to float32 (within one ulp: exporters
    round sqrt(2) and 1/sqrt(2) either way)."""
    tensor = graph.tensors.get(name) if name else None
    if tensor is None or not tensor.is_constant or tensor.size != 1:
        return False
    stored = np.float32(tensor.data.reshape(()))
    return bool(abs(stored - np.float32(value)) <= np.spacing(np.float32(value)))


def other_input(node: Node, name: str) -> str | None:
    if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def broadcasts_to(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def batched_float(graph: Graph, node: Node) -> bool:
    """A matrix product of float32 operands with equal batch dimensions (none broadcast)."""
    a, b = (graph.tensors[name] for name in node.inputs[:2])
    return (a.dtype == b.dtype == "float32" and len(a.shape) >= 3 and a.shape[:-2] == b.shape[:-2]
            and a.shape[-1] == b.shape[-2] and 0 not in a.shape + b.shape)


def softmax_over_last_axis(graph: Graph, node: Node) -> bool:
    rank = len(graph.tensors[node.inputs[0]].shape)
    # before opset 13 Softmax flattened to 2-D at `axis` (default 1): per-row only at rank - 1
    axis = int(node.attrs.get("axis", -1 if graph.opset >= 13 else 1))
    return axis in (-1, rank - 1)


def per_channel_constant(graph: Graph, name: str | None, width: int) -> str | None:
    """A float32 constant that varies at most along the last axis ([C], [1, C], ...)."""
    tensor = graph.tensors.get(name) if name else None
    if (tensor is None or not tensor.is_constant or tensor.dtype != "float32"
            or tensor.size != width or (tensor.shape and tensor.shape[-1] != width)):
        return None
    return name


def clip_bounds(graph: Graph, node: Node) -> tuple[float, float] | None:
    """Clip's (min, max) when known at compile time: attributes before opset 11, inputs after."""
    if graph.opset < 11:
        return (float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf)))
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[index] if len(node.inputs) > index else ""
        if not name:
            bounds.append(default)
        elif graph.tensors[name].is_constant:
            bounds.append(float(graph.tensors[name].data))
        else:
            return None
    return tuple(bounds)
