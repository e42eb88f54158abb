"""Permute channels so a weight's nonzeros gather into fewer, fuller blocks (PARO-style).

Requires: detect_sparsity and fuse (Dense nodes with their epilogues and SparsityInfo).
Establishes: for every foldable chain, a channel permutation chosen by the kernels' predicted
time has been folded into the weights, so the model computes the same function; each Dense
weight's SparsityInfo describes its stored (permuted) data; every Dense node of a chain that
was searched carries `reorder` (blocks and predicted time before and after, the permutation
applied or the reason none was). Run time pays nothing: no gather is ever inserted.

A chain is a producer Dense whose output channels are the input rows of one consumer Dense,
with only per-channel work between them, so permuting the producer's columns (and bias, and
the per-channel constants between) and the consumer's rows by one permutation leaves the
consumer's output unchanged:
- producer -> [elementwise unary ops, Add/Mul by per-channel constants] -> consumer (an FFN:
  up-projection, GELU, down-projection);
- value projection -> Reshape into heads -> Attention (as V) -> Reshape back -> output
  projection: here the permutation stays within each head (the attention mixes tokens, never
  channels of V, and head h's probabilities weigh only head h's channels).
Anything else (a graph output, a second reader, a channel-mixing op) leaves a chain alone.

Search: channels are grouped into groups of the block height of the consumer's Rx1 blocks, or
the width of the producer's 1xC blocks: by rounds of pairing (match channels two by two,
largest overlap of nonzeros first, merge, repeat) up to 2048 channels, greedily beyond (densest
first, then the channel adding the fewest new blocks); random swaps between groups then keep
any improvement, for a fixed number of swaps (counted, not timed, so the result never depends
on the machine's speed or load; a model of more than 64 chains shares a fixed total, so its
compile time stays linear in its size). Each candidate block shape is tried, the
permuted weights are scored by the cost model (the pattern each would then choose), and the
best candidate is kept only if it beats the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.compiler.channel_groups import search
from sparsec.compiler.ir import Graph, Node
from sparsec.compiler.ops import DENSE, ELEMENTWISE_UNARY, weight_view
from sparsec.compiler.passes.detect_sparsity import analyse, float_force, predicted_costs

NAME = "reorder-blocks"
# Random swaps tried per chain after the grouping, shared evenly by its candidate block shapes
# and then by its sections. A count, not a time: a deadline made the permutation, and so the
# library, depend on how loaded the compiling machine was. 8192 swaps take about 0.3 s on
# the project's 2-core VM, the time budget this replaced.
SWAPS_PER_CHAIN = 8192
# All chains together get at most this many swaps, shared evenly, so that a graph of thousands
# of small layers (an exporter's decomposition) compiles in time linear in its size with a
# small constant; models up to 64 chains (BERT-large has 48) keep SWAPS_PER_CHAIN each.
SWAPS_PER_MODEL = 64 * SWAPS_PER_CHAIN
SEED = 0  # the swap search is random but reproducible: the same model compiles the same


@dataclass
class Chain:
    producer: Node
    consumer: Node
    between: list[Node]  # per-channel nodes whose constants follow the permutation
    groups: int  # the permutation maps channels within `groups` equal, consecutive ranges
    kind: str


def run(graph: Graph, ctx) -> Graph:
    if not ctx.options.reorder:
        return graph
    graph = graph.copy()
    rng = np.random.default_rng(SEED)
    chains = find_chains(graph)
    swaps = min(SWAPS_PER_CHAIN, SWAPS_PER_MODEL // max(1, len(chains)))
    for chain in chains:
        record = _reorder(graph, chain, ctx, rng, swaps)
        for node in (chain.producer, chain.consumer):
            node.attrs["reorder"] = record
        ctx.log.append(f"{NAME}: {chain.producer.name} -> {chain.consumer.name}: "
                       f"{record['result']}")
    return graph


# --- finding chains ---------------------------------------------------------------------------

def find_chains(graph: Graph) -> list[Chain]:
    readers = graph.consumers()
    outputs = set(graph.outputs)

    def sole_reader(name: str) -> Node | None:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    chains, claimed = [], set()
    for node in graph.nodes:
        if not _reorderable_dense(graph, node, readers) or id(node) in claimed:
            continue
        width = graph.tensors[node.inputs[1]].shape[1]
        chain = _elementwise_chain(graph, node, width, sole_reader) \
            or _attention_value_chain(graph, node, width, sole_reader)
        if chain is None or id(chain.consumer) in claimed:
            continue
        if not _reorderable_dense(graph, chain.consumer, readers):
            continue
        claimed.update((id(chain.producer), id(chain.consumer)))
        chains.append(chain)
    return chains


def _reorderable_dense(graph: Graph, node: Node, readers: dict[str, list[Node]]) -> bool:
    """A Dense over a constant float32 K x N weight read once, with a per-column bias.
    `readers`: graph.consumers(), computed once (a count over every node, per Dense, made
    finding chains quadratic)."""
    weight = weight_view(graph, node)
    if weight is None or node.attrs.get("trans_a", 0) or node.attrs.get("quantize"):
        return False
    if weight.dtype != "float32" or weight.sparsity is None:
        return False
    if len(readers.get(weight.name, [])) != 1 \
            or weight.name in graph.outputs:
        return False
    bias = graph.tensors[node.inputs[2]] if node.inputs[2] else None
    return bias is None or (bias.is_constant and all(d == 1 for d in bias.shape[:-1]))


def _elementwise_chain(graph, producer, width, sole_reader) -> Chain | None:
    between, current = [], producer.outputs[0]
    while True:
        reader = sole_reader(current)
        if reader is None:
            return None
        if reader.op == DENSE and reader.inputs[0] == current:
            if graph.tensors[reader.inputs[1]].shape[0] != width:
                return None
            return Chain(producer, reader, between, 1, "elementwise")
        if reader.op in ELEMENTWISE_UNARY and reader.op != "Clip" or (
                reader.op == "Clip" and all(graph.tensors[n].is_constant
                                            for n in reader.inputs[1:] if n)):
            between.append(reader)
        elif reader.op in ("Add", "Mul", "Sub", "Div") and _per_channel_other(
                graph, reader, current, width):
            between.append(reader)
        else:
            return None
        current = reader.outputs[0]


def _per_channel_other(graph: Graph, node: Node, current: str, width: int) -> bool:
    """The node's other operand is a constant varying at most along the channel axis, and the
    node keeps the shape (so it is per-channel work the permutation commutes with)."""
    if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return False
    other = graph.tensors[node.inputs[1] if node.inputs[0] == current else node.inputs[0]]
    return (other.is_constant and all(d == 1 for d in other.shape[:-1])
            and (not other.shape or other.shape[-1] in (1, width))
            and graph.tensors[node.outputs[0]].shape == graph.tensors[current].shape)


def _attention_value_chain(graph, producer, width, sole_reader) -> Chain | None:
    split = sole_reader(producer.outputs[0])
    if split is None or split.op != "Reshape":
        return None
    flat, heads_shape = graph.tensors[split.inputs[0]].shape, graph.tensors[split.outputs[0]].shape
    if (len(heads_shape) != len(flat) + 1 or heads_shape[:-2] != flat[:-1]
            or heads_shape[-2] * heads_shape[-1] != width):
        return None
    attention = sole_reader(split.outputs[0])
    if (attention is None or attention.op != "Attention" or attention.inputs[2] != split.outputs[0]
            or split.outputs[0] in attention.inputs[:2] + attention.inputs[3:]):
        return None
    heads, per_head = heads_shape[-2], heads_shape[-1]
    # V read as [.., keys, head, d] -> [.., head, keys, d]; the output written back likewise
    if tuple(attention.attrs.get("v_perm", ())) != _head_swap(len(heads_shape)) \
            or tuple(attention.attrs.get("y_perm", ())) != _head_swap(len(heads_shape)):
        return None
    merge = sole_reader(attention.outputs[0])
    if merge is None or merge.op != "Reshape":
        return None
    merged = graph.tensors[merge.outputs[0]].shape
    if merged[-1] != width or graph.tensors[merge.inputs[0]].shape[-2:] != (heads, per_head):
        return None
    consumer = sole_reader(merge.outputs[0])
    if consumer is None or consumer.op != DENSE or consumer.inputs[0] != merge.outputs[0]:
        return None
    if graph.tensors[consumer.inputs[1]].shape[0] != width:
        return None
    return Chain(producer, consumer, [], heads, "attention value/output")


def _head_swap(rank: int) -> tuple[int, ...]:
    return tuple(range(rank - 3)) + (rank - 2, rank - 3, rank - 1)


# --- searching --------------------------------------------------------------------------------

def _reorder(graph: Graph, chain: Chain, ctx, rng, swaps: int) -> dict:
    w1 = graph.tensors[chain.producer.inputs[1]]
    w2 = graph.tensors[chain.consumer.inputs[1]]
    width = w1.shape[1]
    identity = np.arange(width)
    before = _score(w1.data, w2.data, identity, ctx)
    if all(_full(w.sparsity) for w in (w1, w2)):
        return {"kind": chain.kind, "before": before, "after": before,
                "result": "kept the channel order (every block already full)"}
    best, best_score = identity, before
    candidates = list(_candidates(w1.data, w2.data, width // chain.groups, ctx))
    for group, features in candidates:
        perm = search(features, group, chain.groups, rng, swaps // len(candidates))
        score = _score(w1.data, w2.data, perm, ctx)
        if score["predicted"] < best_score["predicted"] and _no_more_blocks(w1, w2, score):
            best, best_score = perm, score
    record = {"kind": chain.kind, "before": before, "after": best_score}
    if best is identity:
        record["result"] = "kept the channel order (no permutation predicted faster)"
        return record
    _apply(graph, chain, best, ctx)
    record["permutation"] = [int(p) for p in best]
    changes = ", ".join(f"{role} {_describe(before['blocks'][role])} -> "
                        f"{_describe(best_score['blocks'][role])}"
                        for role in ("producer", "consumer"))
    record["result"] = (f"permuted {width} channels: {changes}; predicted "
                        f"{best_score['predicted'] / before['predicted']:.2f}x the time")
    return record


def _describe(blocks: dict) -> str:
    if not blocks["pattern"].is_block:
        return blocks["pattern"]
    return f"{blocks['blocks']} {blocks['pattern']} blocks (fill {blocks['fill']:.0%})"


def _no_more_blocks(w1, w2, score: dict) -> bool:
    """Each weight needs at most as many blocks of its new pattern as it did unpermuted."""
    for role, weight in (("producer", w1), ("consumer", w2)):
        pattern = score["blocks"][role]["pattern"]
        if pattern.is_block and (score["blocks"][role]["blocks"]
                                 > weight.sparsity.block_stats[pattern][0]):
            return False
    return True


def _full(info) -> bool:
    """A block pattern whose blocks hold no zero: no permutation can need fewer of them."""
    return (info.pattern.is_block and info.pattern != "1x1"
            and info.block_stats[info.pattern][1] >= 1.0)


def _candidates(w1: np.ndarray, w2: np.ndarray, per_group: int, ctx):
    """(group size, per-channel nonzero features) for each block shape worth a search: the
    consumer's rows in Rx1 blocks, the producer's columns in 1xC blocks, wherever full blocks
    of that shape would be predicted faster than the weight's present kernel (the bound that
    rules out, say, 1x4 blocks for a kernel that costs more per weight than unstructured)."""
    shapes = ((w2, lambda g: f"{g}x1", w2 != 0), (w1, lambda g: f"1x{g}", (w1 != 0).T))
    for weight, pattern_of, features in shapes:
        info = analyse(weight, ctx.cost, float_force(ctx))
        present = predicted_costs(weight, info.block_stats, ctx.cost)[info.pattern]
        nonzeros = int(np.count_nonzero(weight))
        for group in (4, 16):
            pattern = pattern_of(group)
            per_block = ctx.cost.per_block.get(pattern)
            if (per_group % group or per_group <= group or per_block is None
                    or (ctx.options.force_pattern and ctx.options.force_pattern != pattern)):
                continue
            if nonzeros / group * per_block < present:
                yield group, features


def _score(w1: np.ndarray, w2: np.ndarray, perm: np.ndarray, ctx) -> dict:
    """Predicted time of both weights under `perm`, each at the pattern it would choose."""
    total, blocks = 0.0, {}
    for role, weight in (("producer", w1[:, perm]), ("consumer", w2[perm, :])):
        info = analyse(weight, ctx.cost, float_force(ctx))
        costs = predicted_costs(weight, info.block_stats, ctx.cost)
        total += costs[info.pattern]
        counted = info.pattern.is_block
        blocks[role] = {"pattern": info.pattern,
                        "blocks": info.block_stats[info.pattern][0] if counted else None,
                        "fill": round(info.block_stats[info.pattern][1], 4) if counted else None}
    return {"predicted": total, "blocks": blocks}


# --- applying ---------------------------------------------------------------------------------

def _apply(graph: Graph, chain: Chain, perm: np.ndarray, ctx) -> None:
    producer, consumer = chain.producer, chain.consumer
    w1 = graph.tensors[producer.inputs[1]]
    w1.data = np.ascontiguousarray(w1.data[:, perm])
    w1.sparsity = analyse(w1.data, ctx.cost, float_force(ctx))
    if producer.inputs[2]:
        _permute_last_axis(graph, producer, 2, perm)
    for node in chain.between:
        for index, name in enumerate(node.inputs):
            if name and graph.tensors[name].is_constant:
                _permute_last_axis(graph, node, index, perm)
    w2 = graph.tensors[consumer.inputs[1]]
    w2.data = np.ascontiguousarray(w2.data[perm, :])
    w2.sparsity = analyse(w2.data, ctx.cost, float_force(ctx))


def _permute_last_axis(graph: Graph, node: Node, index: int, perm: np.ndarray) -> None:
    """A per-channel constant, permuted into a copy of its own (another node may share it)."""
    tensor = graph.tensors[node.inputs[index]]
    if not tensor.shape or tensor.shape[-1] == 1:
        return  # the same for every channel
    name = f"{tensor.name}::reordered"
    while name in graph.tensors:
        name += "'"
    data = np.ascontiguousarray(tensor.data[..., perm])
    graph.tensors[name] = type(tensor)(name, tensor.shape, tensor.dtype, data)
    node.inputs[index] = name
