"""Nodes that compute nothing, taken out before the rules look for patterns: a Cast to the
type its input already has (ViT's eager attention, as torch's TorchScript exporter writes it,
casts the float32 probabilities to float32 between the Softmax and the MatMul by V, which hid
the attention from fuse_attention)."""

from __future__ import annotations

from sparsec.compiler.ir import DTYPES, Graph


def drop_no_op_casts(graph: Graph) -> None:
    """Readers of a same-type Cast read its input instead; the Cast goes. One that the graph
    returns stays (its output is a name the caller asks for)."""
    renamed: dict[str, str] = {}
    kept = []
    outputs = set(graph.outputs)
    for node in graph.nodes:
        node.inputs = [renamed.get(name, name) for name in node.inputs]
        same_type = (node.op == "Cast" and DTYPES.get(int(node.attrs.get("to", 0)))
                     == graph.tensors[node.inputs[0]].dtype)
        if same_type and node.outputs[0] not in outputs:
            renamed[node.outputs[0]] = node.inputs[0]
            continue
        kept.append(node)
    if renamed:
        graph.nodes = kept
        graph.remove_unused()
