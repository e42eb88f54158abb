"""Render a planned graph into C: `model.c` (and, for a large model, `unit-N.c`: units.py), the
C header `model.h`, and the weight blob.

Every node's kernel was chosen by the select-kernels pass and recorded on it; this module only
renders those rows. Identifiers in the C come from indices only; names from
the model appear only inside escaped string literals.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from sparsec.codegen import cnames, exports, units
from sparsec.codegen.c_literals import CTYPES
from sparsec.codegen.costs import PARALLEL_MIN_NS, runs_parallel
from sparsec.codegen.kernels import KernelSpec, by_key
from sparsec.codegen.request import KernelRequest, WeightSink
from sparsec.codegen.selection import chosen, portable_reason
from sparsec.codegen.targets import FEATURE_BITS, Target
from sparsec.codegen.weight_symbols import WeightSymbols
from sparsec.compiler.ir import Graph
from sparsec.compiler.ops import COPY_OPS, DENSE
from sparsec.errors import PortableKernelWarning, TemplateError, user_stacklevel
from sparsec.version import ABI_VERSION

BLOB_ALIGNMENT = 64
# Calls per run-function part. The C compiler's time grew faster than the graph with one run
# function holding every call (and, inlined, every kernel called once): 4,000 Relus took
# 108 s against 8.7 s for 1,000. Parts of a bounded size keep it per node. Parts are also
# what units.py groups into translation units: 16 calls of a transformer's kernels (about
# 50 KB of C) are no more than one unit's worth, so even MiniLM splits into several units.
PART_CALLS = 16


def _require(condition: bool, message: str) -> str:
    if not condition:
        raise TemplateError(f"template requirement failed: {message}")
    return ""


# The weight symbols of the compile rendering in this thread: the templates' `weight` filter
# names a blob offset's constant through them. A context variable and not a filter bound per
# compile, so that every compile shares one environment and its compiled templates.
_WEIGHT_SYMBOLS: contextvars.ContextVar[WeightSymbols] = contextvars.ContextVar("weight_symbols")


def _weight_symbol(offset: int) -> str:
    return _WEIGHT_SYMBOLS.get().use(offset)


@functools.cache
def environment() -> jinja2.Environment:
    """One environment per process: compiling a compile's templates anew took 0.2 s of a small
    model's 0.4 s (the test suite compiles thousands). Jinja2 reloads a template whose file
    changed (auto_reload), and its template cache is locked for threads."""
    root = resources.files("sparsec.templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
                             cache_size=1000)
    env.globals["require"] = _require
    env.filters["weight"] = _weight_symbol
    return env


class WeightBlob(WeightSink):
    """Constants laid out back to back, each 64-byte aligned, as one binary file. Equal
    constants are stored once (a dispatched kernel's tables equal its fallback's).

    Each constant goes to a temporary file as it is added, hashed on the way, so the blob never
    sits in memory: a BERT-large's would be hundreds of MB next to the weights it came from.
    `finish` hands the file over as a `WeightsFile`; a blob never finished removes it."""

    def __init__(self) -> None:
        handle, path = tempfile.mkstemp(prefix="sparsec-weights-", suffix=".bin")
        self._file = os.fdopen(handle, "wb")
        self._path = Path(path)
        self._discard = weakref.finalize(self, _discard_file, self._file, self._path)
        self._hash = hashlib.sha256()
        self._size = 0
        self._offsets: dict[bytes, int] = {}  # sha256 of a constant's bytes -> its offset

    def add(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # its bytes, uncopied
        key = hashlib.sha256(data).digest()
        if key in self._offsets:
            return self._offsets[key]
        padding = b"\0" * (-self._size % BLOB_ALIGNMENT)
        offset = self._size + len(padding)
        for chunk in (padding, data):
            self._file.write(chunk)
            self._hash.update(chunk)
        self._size = offset + data.nbytes
        self._offsets[key] = offset
        return offset

    def finish(self) -> WeightsFile:
        """The blob's file, complete; nothing more may be added."""
        self._discard.detach()
        self._file.close()
        return WeightsFile(self._path, self._size, self._hash.hexdigest())


def _discard_file(handle, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


class WeightsFile:
    """The finished weight blob: a temporary file, removed when this object is collected (or
    at exit), its size and its SHA-256 (hex). `build` places it as the library's weights.bin."""

    def __init__(self, path: Path, size: int, sha256: str) -> None:
        self.path, self.size, self.sha256 = path, size, sha256
        weakref.finalize(self, path.unlink, missing_ok=True)


@dataclass
class Rendered:
    model_c: str
    model_h: str
    weights: WeightsFile
    info: dict
    units: list[str] = field(default_factory=list)  # unit-0.c, ... (units.py); empty: model.c only
    # --name: the prefix the library exports its API under (codegen/exports.py); None: sparsec_
    export_prefix: str | None = None

    def digest(self) -> str:
        h = hashlib.sha256(self.model_c.encode())
        for unit in self.units:
            h.update(hashlib.sha256(unit.encode()).digest())
        h.update(bytes.fromhex(self.weights.sha256))
        return h.hexdigest()


def emit(graph: Graph, target: Target, version: str,
         parallel_min_ns: float = PARALLEL_MIN_NS, emulate: bool = False) -> Rendered:
    """`parallel_min_ns`: parallel kernels predicted faster than this run on the caller's
    thread (0: every parallel kernel uses the pool, as the tests want). `emulate`: the
    library is built with the target's emulation flags (Target.emulation), so it needs only
    the features the emulation build runs on, and its info says it is emulated."""
    return emit_plans([graph], target, version, parallel_min_ns, emulate)


def emit_plans(graphs: list[Graph], target: Target, version: str,
               parallel_min_ns: float = PARALLEL_MIN_NS, emulate: bool = False,
               buckets: dict | None = None, name: str | None = None) -> Rendered:
    """One library holding one plan per graph (the same model at other input shapes, such as
    sequence-length buckets, shortest first), sharing one weight blob: equal constants are
    stored once. The last plan is the default, the one `sparsec_run` runs, and the model
    info's and header's top-level inputs, outputs and layers describe it; `buckets` (lengths,
    each input's and output's bucketed axes) goes into the info as is, with a "plans"
    section, when there is more than one plan. `name`: the library's API and header under
    that prefix instead of sparsec_ (codegen/exports.py)."""
    env = environment()
    blob = WeightBlob()
    symbols = WeightSymbols(blob)
    token = _WEIGHT_SYMBOLS.set(symbols)
    try:
        return _emit_plans(env, blob, symbols, graphs, target, version, parallel_min_ns,
                           emulate, buckets, name)
    finally:
        _WEIGHT_SYMBOLS.reset(token)


def _emit_plans(env: jinja2.Environment, blob: WeightBlob, symbols: WeightSymbols,
                graphs: list[Graph], target: Target, version: str, parallel_min_ns: float,
                emulate: bool, buckets: dict | None, name: str | None) -> Rendered:
    plans = []
    for number, graph in enumerate(graphs):
        plans.append(_render_plan(env, graph, target, blob, symbols, number, parallel_min_ns))
    first = 0
    for plan in plans:  # profiled builds: each plan's layers count into its own span
        plan["first_layer"], first = first, first + len(plan["calls"])
    default = plans[-1]
    required = target.emulation.features if emulate else target.features
    features = sum(1 << FEATURE_BITS[f] for f in required)
    arena_bytes = max(plan["arena_bytes"] for plan in plans)
    info = model_info(graphs[-1], target, version, blob, default["layers"], required)
    info["arena_bytes"] = arena_bytes  # a run context's: the largest plan's
    if len(plans) > 1:
        info["buckets"] = buckets
        info["plans"] = [_plan_info(graph, plan) for graph, plan in zip(graphs, plans)]
    if emulate:
        info["emulated"] = target.emulation.what
    if name:
        info["name"] = name
    context = dict(version=version, target=target.name,
                   includes=target.includes, required_features=features,
                   arena_bytes=arena_bytes, profiled_layers=first,
                   num_inputs=len(graphs[-1].inputs),
                   num_outputs=len(graphs[-1].outputs),
                   info_literal=cnames.c_string_literal(json.dumps(info, ensure_ascii=True)))
    model_c, unit_sources = units.render(env, context, plans, symbols)
    if name:
        model_c += exports.wrappers_c(name)
    model_h = env.get_template("model.h.j2").render(
        version=version, target=target.name, arena_bytes=arena_bytes,
        inputs=_header_tensors(graphs[-1], graphs[-1].inputs, buckets, "inputs"),
        outputs=_header_tensors(graphs[-1], graphs[-1].outputs, buckets, "outputs"),
        lengths=buckets["lengths"] if len(plans) > 1 else [],
        macro=f"{name.upper()}_MODEL" if name else "SPARSEC_MODEL",
        symbol=f"{name}_model" if name else "sparsec_model",
        declarations=exports.declarations_h(name) if name else "")
    return Rendered(model_c, model_h, blob.finish(), info, unit_sources, name)


def _render_plan(env: jinja2.Environment, graph: Graph, target: Target, blob: WeightBlob,
                 symbols: WeightSymbols, number: int, parallel_min_ns: float) -> dict:
    """One plan's kernels and run function (model.c.j2's `plans` entries); its functions
    carry the plan's number, so plans coexist in one library."""
    assert graph.memory is not None, "plan_memory must run before emit"
    specs = [chosen(node) for node in graph.nodes]
    features = {option.feature: option for option in target.dispatch}
    index = {name: i for i, name in enumerate(graph.tensors)}
    calls, layers = [], []
    read_or_written: set[str] = set()  # the tensors some call passes, for their pointers
    for node_index, (node, spec) in enumerate(zip(graph.nodes, specs)):
        if all(graph.tensors[out].size == 0 for out in node.outputs if out):
            continue  # nothing to compute, and kernels assume at least one element
        request = KernelRequest(graph, node, blob)
        params = spec.params(request)
        fn = cnames.node_fn(node_index, spec.symbol, number)
        kernels = [{"source": env.get_template(spec.template).render(fn=fn, **params)}]
        alternatives = []
        for feature, key in node.dispatch:
            option, other = features[feature], by_key(key)
            other_request = KernelRequest(graph, node, blob)
            other_fn = cnames.node_fn(node_index, other.symbol, number)
            source = env.get_template(other.template).render(fn=other_fn,
                                                             **other.params(other_request))
            assert other_request.args == request.args, "a dispatched kernel takes the same args"
            kernels.append({"source": source, "begin": option.begin, "end": option.end})
            alternatives.append({"fn": other_fn, "mask": 1 << FEATURE_BITS[option.feature],
                                 "feature": option.feature, "kernel": other.symbol})
        args = [cnames.tensor_var(index[n]) for n in request.args]
        read_or_written.update(request.args)
        if spec.scratch:  # a kernel that needs no scratch for this node gets NULL
            region = graph.memory.scratch.get(node_index)
            args.append(f"(float *)(arena + {region[0]})" if region else "NULL")
        if spec.parallel:  # NULL runs the kernel's tasks on the calling thread
            args.append("pool" if runs_parallel(graph, node, spec, target, parallel_min_ns)
                        else "NULL")
        calls.append({"fn": fn, "args": args, "checked": request.checked,
                      "dispatch": alternatives, "layer": len(calls),
                      "tensors": request.args, "kernels": kernels,
                      "weights": symbols.take()})
        layers.append(_layer_info(graph, node, spec))
        slow = portable_reason(graph, node, spec, target)
        if slow:  # never silently: a portable product can be 10x the rest of the model
            layers[-1]["portable"] = slow
            warnings.warn(f"layer {node.name!r}: {slow}", PortableKernelWarning,
                          stacklevel=user_stacklevel())
        if alternatives:
            layers[-1]["dispatch"] = {a["feature"]: a["kernel"] for a in alternatives}
        if spec.parallel:
            layers[-1]["threads"] = "pool" if args[-1] == "pool" else "caller"
    # A set, not a scan of every call per tensor: that was quadratic in the node count.
    used = [name for name in graph.tensors if name in read_or_written]
    # Every pointer made in the tensors' order, as one run function made them, so that the
    # weight blob's layout does not depend on how the calls are split into parts.
    pointers = [_pointer(graph, name, index[name], blob, symbols) for name in used]
    by_name = dict(zip(used, pointers))
    copies = _output_copies(graph, index, blob, symbols, pointers)
    copied = {copy["src"] for copy in copies}
    parts = [_part(calls[start:start + PART_CALLS], by_name, index, number, start // PART_CALLS)
             for start in range(0, len(calls), PART_CALLS)]
    return {"run": cnames.plan_fn(number), "parts": parts,
            "pointers": [p for p in pointers if p["var"] in copied],
            "calls": calls, "copies": copies, "layers": layers,
            "arena_bytes": graph.memory.arena_bytes}


def _part(calls: list[dict], pointers: dict, index: dict, plan: int, number: int) -> dict:
    """One run-function part: its calls and the pointers they pass (in the tensors' order)."""
    names = sorted({name for call in calls for name in call["tensors"]}, key=index.__getitem__)
    return {"fn": cnames.part_fn(plan, number), "plan": plan, "number": number, "calls": calls,
            "pointers": [pointers[name] for name in names],
            "dispatch": any(call["dispatch"] for call in calls)}


def _plan_info(graph: Graph, plan: dict) -> dict:
    return {"inputs": [_input_info(graph, n) for n in graph.inputs],
            "outputs": [_tensor_info(graph, n) for n in graph.outputs],
            "arena_bytes": plan["arena_bytes"], "layers": plan["layers"]}


def _pointer(graph: Graph, name: str, tensor_index: int, blob: WeightBlob,
             symbols: WeightSymbols) -> dict:
    tensor = graph.tensors[name]
    pointer = {"var": cnames.tensor_var(tensor_index), "ctype": CTYPES[tensor.dtype],
               "const": True}
    if name in graph.inputs:
        pointer["expr"] = f"inputs[{graph.inputs.index(name)}]"
    elif tensor.is_constant:
        symbol = symbols.name(blob.add(np.ascontiguousarray(tensor.data, dtype=tensor.dtype)))
        pointer.update(expr=symbol, weight=symbol)
    elif name in graph.outputs:
        pointer.update(expr=f"outputs[{graph.outputs.index(name)}]", const=False)
    else:
        pointer.update(expr=f"arena + {graph.memory.offsets[name]}", const=False)
    return pointer


def _output_copies(graph: Graph, index: dict, blob: WeightBlob, symbols: WeightSymbols,
                   pointers: list) -> list[dict]:
    """Outputs no node writes (a graph input or constant returned as is, or a repeated output)."""
    produced = {out for node in graph.nodes for out in node.outputs}
    known = {p["var"]: p for p in pointers}
    copies, written = [], set()
    for position, name in enumerate(graph.outputs):
        if name in produced and name not in written:
            written.add(name)
            continue
        source = graph.outputs.index(name) if name in written else None
        if source is not None:
            src = f"outputs[{source}]"
        else:
            var = cnames.tensor_var(index[name])
            if var not in known:
                known[var] = _pointer(graph, name, index[name], blob, symbols)
                pointers.append(known[var])
            src = var
        copies.append({"dst": f"outputs[{position}]", "src": src,
                       "nbytes": graph.tensors[name].nbytes})
        written.add(name)
    return copies


def _layer_info(graph: Graph, node, spec: KernelSpec) -> dict:
    layer = {"node": node.name, "op": node.op, "kernel": spec.symbol}
    if "unfused" in node.attrs:  # fuse's reason that this Softmax is not in an Attention
        layer["unfused"] = node.attrs["unfused"]
    if node.op == DENSE:
        weight = graph.tensors[node.inputs[1]]
        layer.update(weight=weight.name, shape=list(weight.shape), weight_dtype=weight.dtype,
                     layouts={"input": graph.tensors[node.inputs[0]].layout,
                              "output": graph.tensors[node.outputs[0]].layout},
                     activation=node.attrs.get("activation", "") or None,
                     bias=bool(node.inputs[2]))
        if "reorder" in node.attrs:  # the permutation itself stays in the IR
            layer["reorder"] = {k: v for k, v in node.attrs["reorder"].items()
                                if k != "permutation"}
        info = weight.sparsity
        if info is not None:
            layer.update(density=round(info.density, 6), pattern=info.pattern,
                         reason=info.reason,
                         blocks={p: {"nonzero_blocks": b, "fill": round(f, 4)}
                                 for p, (b, f) in info.block_stats.items()})
    return layer


def _tensor_info(graph: Graph, name: str) -> dict:
    t = graph.tensors[name]
    return {"name": name, "shape": list(t.shape), "dtype": t.dtype}


# Ops through which an integer input reaches a Gather with its values unchanged (Cast between
# integer types only: a Cast to float ends the trace).
_INDEX_PASSTHROUGH = frozenset(COPY_OPS) | {"Cast"}


def _input_info(graph: Graph, name: str) -> dict:
    """An input's record; an integer input that indexes a Gather (directly or through
    Cast/Reshape/Unsqueeze/...) also gets `index_range` [0, rows): the rows of the smallest
    table it indexes, so that callers can draw valid token ids without the model."""
    record = _tensor_info(graph, name)
    if np.dtype(graph.tensors[name].dtype).kind not in "iu":
        return record
    consumers = graph.consumers()
    rows, pending, seen = [], [name], {name}
    while pending:
        current = pending.pop()
        for node in consumers.get(current, []):
            if node.op == "Gather" and node.inputs[1] == current:
                data = graph.tensors[node.inputs[0]]
                axis = node.attrs.get("axis", 0)
                rows.append(data.shape[axis + len(data.shape) if axis < 0 else axis])
            elif node.op in _INDEX_PASSTHROUGH and node.inputs[0] == current:
                out = node.outputs[0]
                if out not in seen and np.dtype(graph.tensors[out].dtype).kind in "iu":
                    seen.add(out)
                    pending.append(out)
    if rows:
        record["index_range"] = [0, min(rows)]
    return record


def model_info(graph: Graph, target: Target, version: str, blob: WeightBlob,
               layers: list[dict], features: tuple[str, ...]) -> dict:
    return {
        "sparsec_version": version,
        "abi_version": ABI_VERSION,
        "target": target.name,
        "features": list(features),
        "inputs": [_input_info(graph, n) for n in graph.inputs],
        "outputs": [_tensor_info(graph, n) for n in graph.outputs],
        "arena_bytes": graph.memory.arena_bytes,
        "layers": layers,
    }


def _header_tensors(graph: Graph, names: list[str], buckets: dict | None,
                    role: str) -> list[dict]:
    axes = buckets[role] if buckets else {}
    result = []
    for position, name in enumerate(names):
        t = graph.tensors[name]
        result.append({"index": position,
                       "name_literal": cnames.c_string_literal(name, in_macro=True),
                       "dtype_literal": cnames.c_string_literal(t.dtype),
                       "ctype": CTYPES[t.dtype], "shape": list(t.shape), "elements": t.size,
                       "bucket_axes": axes.get(name, [])})
    return result
