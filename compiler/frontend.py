"""ONNX -> sparsec IR: load safely, check, infer static shapes, import nodes.

Every way a model can be unusable ends in a `FrontendError` subclass whose message names the
tensor or node at fault and the fix; nothing from the model is trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from sparsec.compiler import (
    attributes,
    float16,
    limits,
    node_order,
    split_slices,
    static_shapes,
    weights,
)
from sparsec.compiler.ir import DTYPES, Graph, Node, Tensor
from sparsec.compiler.ops import LOWERED_OPS, RUNTIME_OPS, SHAPE_OPS
from sparsec.errors import FrontendError, ShapeError, UnsupportedOperatorError

STANDARD_DOMAINS = ("", "ai.onnx")


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple]:
    """`["input_ids=1x128"]` -> `{"input_ids": (1, 128)}`, with a clear error for bad text.
    One dimension may be a set of lengths, buckets (compiler/buckets.py):
    `input_ids=1x{32,64,128}` -> `{"input_ids": (1, [32, 64, 128])}`."""
    shapes: dict[str, tuple] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(_parse_dim(d) for d in dims.split("x"))
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(
                d < 0 for dim in shape for d in (dim if isinstance(dim, list) else [dim])):
            raise FrontendError(f"bad --input-shape {spec!r}: expected NAME=DxDx... such as "
                                "input_ids=1x128, or one dimension as a set of lengths, "
                                "input_ids=1x{32,64,128}")
        shapes[name] = shape
    return shapes


def _parse_dim(text: str) -> int | list[int]:
    if text.startswith("{") and text.endswith("}"):
        return [int(d) for d in text[1:-1].split(",")] if text[1:-1].strip() else []
    return int(text)


def load_model(source: str | os.PathLike | onnx.ModelProto) -> weights.Detached:
    """Read a model, pulling in external data only from inside the model's own folder. Large
    initializers stay in their files, mapped, out of the protobuf (compiler/weights.py)."""
    if isinstance(source, weights.Detached):
        return source
    if isinstance(source, onnx.ModelProto):
        if any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(source)):
            raise FrontendError("this ModelProto keeps tensors in external files, which would "
                                "be read relative to the current directory; pass the model's "
                                "file path instead, so sparsec reads them from its folder")
        return weights.detach_proto(source)
    path = Path(source)
    if not path.is_file():
        raise FrontendError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise FrontendError(f"{path} is empty, not an ONNX model")
    detached = weights.read_file(path)
    if detached is None:  # not a well-formed protobuf: onnx.load says what is wrong with it
        try:
            detached = weights.detach_proto(onnx.load(str(path), load_external_data=False))
        except Exception as exc:  # protobuf raises several unrelated types for corrupt files
            raise FrontendError(f"{path} is not a readable ONNX model: {exc}") from None
    _load_external_data(detached, path.parent)
    return detached


def _check_text(message, where: str = "model") -> None:
    """Every string field must be UTF-8: protobuf hands back undecodable ones as bytes, which
    no later stage expects (names are compared, escaped and written as JSON)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            values = value if field.is_repeated else [value]
            bad = next((v for v in values if not isinstance(v, str)), None)
            if bad is not None:
                raise FrontendError(f"{where}: field {field.name!r} holds {bad[:40]!r}..., "
                                    "which is not UTF-8 text; the file is corrupt")
        elif field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                _check_text(item, f"{where}.{field.name}")


def _load_external_data(detached: weights.Detached, base: Path) -> None:
    base = base.resolve()
    model = detached.proto
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = Path(info.location)
        resolved = (base / location).resolve()
        if location.is_absolute() or ".." in location.parts or base not in resolved.parents:
            raise FrontendError(
                f"tensor {tensor.name!r} keeps its data at {info.location!r}, outside the "
                "model's folder; sparsec only reads external data next to the model file")
        if not resolved.is_file():
            raise FrontendError(f"external data file {info.location!r} of tensor "
                                f"{tensor.name!r} is missing")
        size = resolved.stat().st_size
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise FrontendError(f"external data of tensor {tensor.name!r} lies past the end of "
                                f"{info.location!r} (offset {offset}, length {length}, "
                                f"file {size} bytes)")
    weights.detach_external(detached, base)
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise FrontendError(f"cannot read external data: {exc}") from None


def import_model(source: str | os.PathLike | onnx.ModelProto | weights.Detached,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 max_memory: int = limits.DEFAULT_MAX_MEMORY) -> Graph:
    """Load, check and import an ONNX model into a `Graph` with static shapes everywhere;
    no tensor, and no constant the import folds, may exceed `max_memory` bytes."""
    detached = load_model(source)
    model, arrays = detached.proto, detached.arrays
    _check_text(model)
    opset = _standard_opset(model)
    model = _pin_input_shapes(model, input_shapes or {}, set(arrays))
    model = node_order.sorted_model(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise FrontendError(f"the model is not valid ONNX: {_first_line(exc)}") from None
    if not model.graph.output:
        raise FrontendError("the model's graph has no outputs, so there is nothing to compute")
    _check_declared_sizes(model, max_memory, arrays)
    # after the size checks: widening doubles float16 tensors
    model, arrays = float16.widen_detached(model, arrays)
    _check_operators(model, set(arrays))
    resolved = static_shapes.resolve(model, opset, max_memory,
                                     sum(array.nbytes for array in arrays.values()))
    del model  # the checked copy: only the resolved one is read from here
    graph = _build_graph(resolved, opset, max_memory, arrays, detached.order)
    attributes.check(graph)
    split_slices.lower(graph)
    return graph


def _check_declared_sizes(model: onnx.ModelProto, max_memory: int,
                          arrays: dict[str, np.ndarray]) -> None:
    """Declared dims are checked before any tensor is decoded or any shape is inferred."""
    g = model.graph
    for init in g.initializer:
        limits.check_bytes(limits.shape_bytes(init.dims, limits._itemsize(init.data_type)),
                           f"initializer {init.name!r} of shape {list(init.dims)}", max_memory)
    for name, array in arrays.items():  # mapped, not read: their bytes exist only on disk
        limits.check_bytes(array.nbytes, f"initializer {name!r} of shape {list(array.shape)}",
                           max_memory)
    for value in list(g.input) + list(g.value_info) + list(g.output):
        if value.name in arrays:
            continue
        ttype = value.type.tensor_type
        dims = ttype.shape.dim if ttype.HasField("shape") else []
        negative = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value < 0]
        if negative:
            raise ShapeError(f"tensor {value.name!r} declares a negative dimension "
                             f"({negative[0]}); dimensions are sizes, zero or more")
        if dims and all(d.HasField("dim_value") for d in dims):
            limits.check_bytes(limits.shape_bytes([d.dim_value for d in dims],
                                                  limits._itemsize(ttype.elem_type)),
                               f"tensor {value.name!r} of shape "
                               f"{[d.dim_value for d in dims]}", max_memory)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _standard_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    if not versions:
        raise FrontendError("the model imports no standard ONNX opset")
    newest = onnx.defs.onnx_opset_version()
    if versions[0] > newest:
        raise FrontendError(f"the model uses opset {versions[0]}, newer than the newest this "
                            f"sparsec knows ({newest}); convert it with onnx.version_converter")
    return versions[0]


def _pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                      detached: set[str]) -> onnx.ModelProto:
    initializers = {t.name for t in model.graph.initializer} | detached
    runtime_inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    unknown = sorted(set(shapes) - set(runtime_inputs))
    if unknown:
        raise ShapeError(f"--input-shape names {', '.join(map(repr, unknown))}, which "
                         f"{'is' if len(unknown) == 1 else 'are'} not model inputs; inputs are: "
                         f"{', '.join(map(repr, runtime_inputs))}")
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = shapes[value.name]
        if len(dims) and len(dims) != len(wanted):
            raise ShapeError(f"--input-shape gives {value.name!r} rank {len(wanted)}, the model "
                             f"declares rank {len(dims)}")
        for dim, size in zip(dims, wanted):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise ShapeError(f"--input-shape sets dimension {dim.dim_value} of "
                                 f"{value.name!r} to {size}; only dynamic dims can be pinned")
        value.type.tensor_type.shape.Clear()
        for size in wanted:
            value.type.tensor_type.shape.dim.add().dim_value = size
    return model


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name for messages; exporters often leave it empty, so say where it is."""
    return node.name or f"<unnamed node {index}>"


def _check_operators(model: onnx.ModelProto, detached: frozenset[str] = frozenset()) -> None:
    """All unsupported nodes in one error, grouped by operator with the likely fix: runtime
    ops need kernels, others must fold away."""
    constant = {t.name for t in model.graph.initializer} | set(detached)
    problems: dict[str, list[str]] = {}
    for index, node in enumerate(model.graph.node):
        if node.domain not in STANDARD_DOMAINS:
            problems.setdefault(f"{node.domain}.{node.op_type}", []).append(
                node_label(node, index))
            continue
        foldable = node.op_type in SHAPE_OPS or all(not name or name in constant
                                                     for name in node.input)
        if foldable:
            constant.update(node.output)
        elif node.op_type not in RUNTIME_OPS | LOWERED_OPS:
            problems.setdefault(node.op_type, []).append(node_label(node, index))
    if problems:
        count = sum(len(names) for names in problems.values())
        summary = ", ".join(f"{op} x{len(names)}" for op, names in problems.items())
        groups = []
        for op, names in problems.items():
            shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
            hint = _fix_for(op)
            groups.append(f"{shown} (op {op})" + (f": {hint}" if hint else ""))
        raise UnsupportedOperatorError(
            f"{count} node(s) use operators sparsec cannot compile ({summary}): "
            + "; ".join(groups)
            + ". Supported at run time: " + ", ".join(sorted(RUNTIME_OPS | LOWERED_OPS))
            + " (other standard ops only on compile-time constants)")


_FIXES = {
    ("Loop", "If", "Scan"): "control flow; export without data-dependent branches or loops "
                            "(torch.onnx.export traces them away for fixed inputs)",
    ("LSTM", "GRU", "RNN"): "recurrent layers are not supported",
    ("ConvTranspose", "ConvInteger", "QLinearConv"): "transposed and integer convolutions are "
                                                     "not supported; Conv is",
    ("NonZero", "Unique", "TopK"): "the result's shape depends on the values; sparsec "
                                   "compiles static shapes only",
}


def _fix_for(op: str) -> str:
    """The likely fix for an operator sparsec refuses, or ""."""
    if op.startswith("com.microsoft."):
        return ("an onnxruntime contrib operator, written by onnxruntime's transformer "
                "optimizer or quantization tools; give sparsec the model as exported, before "
                "those tools")
    if "." in op:
        return "a custom domain's operator; sparsec compiles standard ONNX operators"
    return next((fix for ops, fix in _FIXES.items() if op in ops), "")


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims = []
    for dim in ttype.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _dtype(elem_type: int, what: str) -> str:
    if elem_type not in DTYPES:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in \
            onnx.TensorProto.DataType.values() else str(elem_type)
        raise UnsupportedOperatorError(f"{what} has element type {name}, which sparsec does "
                                       f"not support (supported: {', '.join(DTYPES.values())})")
    return DTYPES[elem_type]


def _build_graph(model: onnx.ModelProto, opset: int, max_memory: int,
                 arrays: dict[str, np.ndarray], order: list[str]) -> Graph:
    g = model.graph
    tensors: dict[str, Tensor] = {}
    stored = {init.name: init for init in g.initializer}
    # The file's order first, so that the IR (and the library) does not depend on which
    # initializers were detached; those the import folded follow.
    for name in dict.fromkeys([*order, *stored]):
        if name in arrays:
            data = arrays[name]
            tensors[name] = Tensor(name, tuple(data.shape), _dtype(
                helper.np_dtype_to_tensor_dtype(data.dtype), f"initializer {name!r}"), data)
        elif name in stored:
            init = stored[name]
            data = _tensor_data(init, f"initializer {name!r}")
            tensors[name] = Tensor(name, tuple(data.shape),
                                   _dtype(init.data_type, f"initializer {name!r}"), data)
    inputs = [v.name for v in g.input if v.name not in tensors]
    # Checked up front: otherwise a sequence or optional value only shows up later as a missing
    # static shape, with advice (--input-shape) that cannot help.
    for role, values in (("input", g.input), ("output", g.output)):
        for value in values:
            kind = value.type.WhichOneof("value")
            if value.name not in tensors and kind not in (None, "tensor_type"):
                kind = kind.removesuffix("_type").replace("_", " ")
                raise UnsupportedOperatorError(
                    f"graph {role} {value.name!r} has {kind} type; sparsec compiles tensors "
                    "only (no sequences, maps, optionals or sparse tensors)")
    dynamic = []
    for value in list(g.input) + list(g.value_info) + list(g.output):
        if value.name in tensors or not value.type.HasField("tensor_type"):
            continue
        shape = _static_shape(value)
        if shape is None:
            if value.name in inputs:
                dynamic.append(value.name)
            continue
        tensors[value.name] = Tensor(value.name, shape, _dtype(
            value.type.tensor_type.elem_type, f"tensor {value.name!r}"))
    if dynamic:
        raise ShapeError(
            "input(s) " + ", ".join(f"{n!r}" for n in dynamic) + " have dynamic or unknown "
            "dimensions; pin them with --input-shape, e.g. --input-shape "
            f"{dynamic[0]}=1x128 (Python: input_shapes={{{dynamic[0]!r}: (1, 128)}})")
    nodes = []
    for index, node in enumerate(g.node):
        attrs = {a.name: _attribute_value(a) for a in node.attribute}
        nodes.append(Node(node.op_type, list(node.input), list(node.output), attrs,
                          node_label(node, index)))
    graph = Graph(inputs=inputs, outputs=[v.name for v in g.output], nodes=nodes,
                  tensors=tensors, opset=opset)
    _require_shapes(graph)
    check_sizes(graph, max_memory)
    return graph


def check_sizes(graph: Graph, max_memory: int) -> None:
    """Shapes inference derived (not only declared ones) against the budget, and all
    weights together."""
    producers = graph.producers()
    for tensor in graph.tensors.values():
        node = producers.get(tensor.name)
        made_by = f"node {node.name!r} (op {node.op}): " if node else ""
        limits.check_bytes(tensor.nbytes, f"{made_by}tensor {tensor.name!r} of shape "
                           f"{list(tensor.shape)}", max_memory)
    weights = sum(t.nbytes for t in graph.tensors.values() if t.is_constant)
    limits.check_bytes(weights, "the model's weights together", max_memory)


def _attribute_value(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return _tensor_data(value, f"attribute {attr.name!r}")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _tensor_data(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    """The values of a stored tensor; data that disagrees with its dims is the model's fault."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise FrontendError(f"{what} declares dims {list(tensor.dims)} but its data does not "
                            f"match them ({_first_line(exc)})") from None


def _require_shapes(graph: Graph) -> None:
    """Every value a kernel touches needs a static shape; constants may get theirs by folding."""
    constant = {n for n, t in graph.tensors.items() if t.is_constant}
    missing = []
    for node in graph.nodes:
        foldable = all(not n or n in constant for n in node.inputs)
        if foldable:
            constant.update(node.outputs)
            continue
        missing += [(out, node) for out in node.outputs if out and out not in graph.tensors]
    for name in graph.outputs:
        if name not in graph.tensors and name not in constant:
            missing.append((name, None))
    if missing:
        where = "; ".join(f"{name!r} (from node {node.name!r}, op {node.op})"
                          if node else repr(name) for name, node in missing[:10])
        raise ShapeError(f"shape inference left {len(missing)} tensor(s) without a static "
                         f"shape: {where}. Pin dynamic inputs with --input-shape")
