"""Range checks on the attributes that index into a tensor's dimensions (axis, axes, perm).

ONNX's checker and shape inference let some through (an axis of -2**63 wraps around in their
arithmetic), and a kernel's parameters would then index outside the shape. Checked once, after
shapes are known, so that every later stage may trust them.
"""

from __future__ import annotations

from sparsec.compiler.ir import Graph, Node
from sparsec.errors import FrontendError

# op -> (the input whose rank bounds the axis, whether axis == rank is allowed too)
AXIS_OPS = {"Softmax": (0, False), "LayerNormalization": (0, False), "Gather": (0, False),
            "Concat": (0, False), "QuantizeLinear": (0, False), "DequantizeLinear": (0, False),
            "Flatten": (0, True)}
AXES_OPS = ("Squeeze", "ReduceMean")  # axes index the input; Unsqueeze's index the output


def check(graph: Graph) -> None:
    """Raise FrontendError, naming the node, for an axis, axes or perm outside its tensor."""
    for node in graph.nodes:
        if node.op in AXIS_OPS and "axis" in node.attrs:
            which, inclusive = AXIS_OPS[node.op]
            rank = _rank(graph, node, node.inputs[which] if len(node.inputs) > which else "")
            if rank is not None:
                _check_axes(node, "axis", [node.attrs["axis"]], rank, rank + inclusive)
        elif node.op in AXES_OPS and "axes" in node.attrs:
            rank = _rank(graph, node, node.inputs[0] if node.inputs else "")
            if rank is not None:
                _check_axes(node, "axes", node.attrs["axes"], rank, rank)
        elif node.op == "Unsqueeze" and "axes" in node.attrs and node.outputs:
            rank = _rank(graph, node, node.outputs[0])
            if rank is not None:
                _check_axes(node, "axes", node.attrs["axes"], rank, rank)
        elif node.op == "Transpose" and "perm" in node.attrs:
            rank = _rank(graph, node, node.inputs[0] if node.inputs else "")
            perm = node.attrs["perm"]
            if rank is not None and sorted(_ints(node, "perm", perm)) != list(range(rank)):
                raise FrontendError(f"node {node.name!r} (op Transpose): perm {list(perm)} is "
                                    f"not a permutation of the input's {rank} axes")


def _rank(graph: Graph, node: Node, name: str) -> int | None:
    tensor = graph.tensors.get(name)
    return None if tensor is None else len(tensor.shape)


def _ints(node: Node, attribute: str, values) -> list[int]:
    values = values if isinstance(values, (list, tuple)) else [values]
    if not all(isinstance(v, int) for v in values):
        raise FrontendError(f"node {node.name!r} (op {node.op}): attribute {attribute!r} must "
                            f"hold integers, not {values!r}")
    return list(values)


def _check_axes(node: Node, attribute: str, values, rank: int, end: int) -> None:
    """Each value in [-rank, end), none twice once made positive."""
    axes = _ints(node, attribute, values)
    bad = [a for a in axes if not -rank <= a < end]
    if bad:
        raise FrontendError(f"node {node.name!r} (op {node.op}): {attribute} {bad[0]} is out of "
                            f"range for a tensor of rank {rank} (allowed: {-rank} to {end - 1})")
    if len({a % max(rank, 1) for a in axes}) != len(axes):
        raise FrontendError(f"node {node.name!r} (op {node.op}): {attribute} {axes} names an "
                            "axis twice")
