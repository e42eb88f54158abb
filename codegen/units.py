"""Split a rendered model into C translation units: `model.c` and, for a large model, `unit-N.c`.

model.c holds the weight blob, the model's tables and each plan's run function. The run
functions' parts (emit.PART_CALLS calls each) and the kernels they call go into units of a
few parts each, bounded by UNIT_BYTES of source, which build.py compiles in parallel and
caches object by object. A unit's text depends on its own layers only: kernels address
constants through pointers named by the constants' content (WeightSymbols), never by an offset
into the blob that another layer's weights would shift. A change to one layer's weights thus
changes model.c (the blob, the model info) and the one unit holding that layer.

A model whose parts fit in one unit's bound stays a single file, model.c: a second file would
add a compiler process (and, uncached, a precompiled header) with nothing to run beside it.
"""

from __future__ import annotations

import itertools

import jinja2

from sparsec.codegen import cnames
from sparsec.codegen.weight_symbols import WeightSymbols

# A unit's size: its kernels' source bytes and CALL_BYTES for each call (the call, its
# pointers, its profiling brackets). Measured on this project's 2-core machine (x86-amx flags,
# gcc 12): a transformer's kernels compile at about 15 us of CPU per byte of source, small
# element-wise ones (a chain of Relus) at about 1.5, and each unit costs about 0.09 s
# besides (a compiler process, the precompiled header, -O3's per-unit work). A unit of
# UNIT_BYTES then takes 2-3.5 s of a transformer's kernels (MiniLM splits into 3 units,
# BERT-base into 5, and a one-layer change recompiles one of them) and 0.2 s of Relus (a
# third overhead, which the second core more than pays back). The same VM's CPU speed drifts
# by tens of percent, so these are rough: two cores must have enough units to share, and
# 1-core builds pay for each unit.
UNIT_BYTES = 128_000
CALL_BYTES = 150


def _part_bytes(part: dict) -> int:
    return sum(CALL_BYTES + sum(len(kernel["source"]) for kernel in call["kernels"])
               for call in part["calls"])


def group_parts(parts: list[dict], unit_bytes: int) -> list[list[dict]]:
    """Consecutive parts, each group closed once its size reaches `unit_bytes`. A group's
    bounds move only where a part's size does, so a change to one layer's weights, which
    leaves the other layers' kernels as they were, leaves every other unit's parts where they
    were (or, where the changed layer's kernels change size, the units after it)."""
    groups, current, size = [], [], 0
    for part in parts:
        current.append(part)
        size += _part_bytes(part)
        if size >= unit_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _part_weights(part: dict) -> set[str]:
    names = {pointer["weight"] for pointer in part["pointers"] if "weight" in pointer}
    for call in part["calls"]:
        names.update(call["weights"])
    return names


def _unit(group: list[dict]) -> dict:
    """unit.c.j2's parameters for one group of parts: its parts, static there, and an entry
    function for each plan's run of them, which model.c's run functions call. Static parts
    called from one place let the C compiler fold identical ones and drop unused
    arguments, as it does in a one-file model: a chain of 2,000 Relus as one file took 3.3 s
    of CPU time to compile with its parts external, 1.1 s with them static."""
    segments = []
    for plan, parts in itertools.groupby(group, key=lambda part: part["plan"]):
        parts = list(parts)
        segments.append({"fn": cnames.unit_entry_fn(plan, parts[0]["number"]), "plan": plan,
                         "parts": parts})
    return {"parts": group, "segments": segments,
            "weights": sorted(set().union(*map(_part_weights, group)))}


def render(env: jinja2.Environment, context: dict, plans: list[dict],
           symbols: WeightSymbols) -> tuple[str, list[str]]:
    """model.c and the unit sources, in the order build.py names them (unit-0.c, ...).
    `context`: model.c.j2's parameters but plans and those this module adds (weight symbols,
    whether the parts are inline, what each run function calls)."""
    groups = group_parts([part for plan in plans for part in plan["parts"]], UNIT_BYTES)
    inline = len(groups) <= 1
    weights = {pointer["weight"] for plan in plans for pointer in plan["pointers"]
               if "weight" in pointer}
    if inline:
        units = []
        entries = [[part["fn"] for part in plan["parts"]] for plan in plans]
        weights.update(*(_part_weights(part) for plan in plans for part in plan["parts"]))
    else:
        units = [_unit(group) for group in groups]
        entries = [[] for _ in plans]
        for unit in units:
            for segment in unit["segments"]:
                entries[segment["plan"]].append(segment["fn"])
    model_c = env.get_template("model.c.j2").render(
        **context, inline_parts=inline, weights=sorted(weights),
        plans=[dict(plan, entries=calls) for plan, calls in zip(plans, entries)],
        weight_symbols=[{"name": name, "offset": offset}
                        for name, offset in symbols.definitions()])
    template = env.get_template("unit.c.j2")
    return model_c, [template.render(version=context["version"], target=context["target"],
                                     includes=context["includes"], **unit)
                     for unit in units]
