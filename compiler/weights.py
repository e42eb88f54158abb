"""Large initializers kept out of the ONNX protobuf, read from the model's files in place.

The protobuf held every weight, and each whole-model step copied them all: `onnx.load` (the
file's bytes, then the parsed message), the checker and shape inference (each serializes the
model and parses it back), then `numpy_helper.to_array`. A BERT-base (435 MB of weights) peaked
at 2.6 GB, and shape inference refuses models over 2 GB outright.

Here the model file's wire format is walked to find each large initializer's `raw_data`, and
the protobuf is parsed without those bytes; external data is found from the tensor's
`location` and `offset`. Each such initializer becomes a read-only array mapped from its file
(`Detached`), and in the protobuf a graph input of its type and shape stands in for it, so the
checker and shape inference see what they saw before at the size of the graph alone. The
frontend puts the arrays back as constant tensors when it builds the IR.

Only initializers that the frontend's shape folding would never evaluate are detached (over
`static_shapes.MAX_FOLDED_ELEMENTS` elements), so that folding and inference decide exactly as
they did with the data in the protobuf.
"""

from __future__ import annotations

import math
import mmap
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsec.compiler.ir import DTYPES
from sparsec.compiler.static_shapes import MAX_FOLDED_ELEMENTS
from sparsec.errors import FrontendError

# Field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, and TensorProto's.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_RAW_DATA = 1, 2, 9
_TENSOR_OTHER_DATA = (3, 4, 5, 6, 7, 10, 11, 13, 14)  # segment, typed values, external data
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass
class Detached:
    """A model whose large initializers live in `arrays` (name -> read-only array, in the
    initializers' order), each replaced in `proto` by a graph input of its type and shape."""

    proto: onnx.ModelProto
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # every initializer's name, as the file had them

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays.values())


class _Malformed(Exception):
    """The wire format is not what onnx.proto describes; onnx.load reports it properly."""


def read_file(path: Path) -> Detached | None:
    """The model at `path` with every large embedded initializer mapped from the file, or
    None where the file is not a well-formed protobuf (the caller loads it the ordinary way,
    whose error names the problem)."""
    with open(path, "rb") as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            return None
    view = memoryview(mapped)
    try:
        stripped, spans = _strip_model(view)
        proto = onnx.ModelProto.FromString(stripped)
    except Exception:  # _Malformed, or protobuf's own (it raises several unrelated types)
        return None
    finally:
        view.release()
    initializers = proto.graph.initializer
    detached = Detached(proto, order=[tensor.name for tensor in initializers])
    for index, (offset, length) in spans.items():
        tensor = initializers[index]
        detached.arrays[tensor.name] = _mapped(mapped, offset, length, tensor, "the model file")
    _replace_by_inputs(proto, set(spans))
    return detached


def detach_external(detached: Detached, base: Path) -> None:
    """Map every large top-level initializer kept in an external file (whose location the
    caller has checked is inside `base`) instead of reading it into the protobuf."""
    indices = set()
    files: dict[Path, mmap.mmap] = {}  # one mapping per file, however many tensors it holds
    for index, tensor in enumerate(detached.proto.graph.initializer):
        if tensor.data_location != TensorProto.EXTERNAL or not _detachable(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        path = (base / info.location).resolve()
        size = path.stat().st_size
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else size - offset
        if not size:
            continue  # nothing to map: the ordinary loader reports the missing data
        if path not in files:
            try:
                with open(path, "rb") as handle:
                    files[path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as exc:  # ENOMEM under an address-space limit, among others
                raise FrontendError(f"cannot map external data file {info.location!r} of "
                                    f"tensor {tensor.name!r}: {exc.strerror or exc}") from None
        detached.arrays[tensor.name] = _mapped(files[path], offset, length, tensor,
                                               repr(info.location))
        indices.add(index)
    _replace_by_inputs(detached.proto, indices)


def detach_proto(model: onnx.ModelProto) -> Detached:
    """A caller's ModelProto, left as it is: its large raw_data initializers are copied into
    arrays once, and the returned protobuf, holding none of them, is a new message."""
    graph = model.graph
    large = {index for index, tensor in enumerate(graph.initializer)
             if tensor.HasField("raw_data") and _detachable(tensor)}
    order = [tensor.name for tensor in graph.initializer]
    if not large:
        return Detached(model, order=order)
    proto = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _copy_field(proto, descriptor, value)
    for descriptor, value in graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(proto.graph, descriptor, value)
    detached = Detached(proto, order=order)
    for index, tensor in enumerate(graph.initializer):
        data = tensor.raw_data if index in large else b""
        if index not in large or len(data) != _expected_bytes(tensor):
            large.discard(index)  # a wrong length stays for the checker to report
            proto.graph.initializer.add().CopyFrom(tensor)
            continue
        stand_in = proto.graph.initializer.add()
        for descriptor, value in tensor.ListFields():
            if descriptor.name != "raw_data":
                _copy_field(stand_in, descriptor, value)
        detached.arrays[tensor.name] = _as_native(
            np.frombuffer(data, _little_endian(tensor.data_type)).reshape(tuple(tensor.dims)))
    _replace_by_inputs(proto, large)
    return detached


def _copy_field(message, descriptor, value) -> None:
    target = getattr(message, descriptor.name)
    if descriptor.is_repeated:
        target.extend(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, descriptor.name, value)


def _detachable(tensor: onnx.TensorProto) -> bool:
    """Numeric, of a type the IR holds, and large enough that shape folding leaves it be."""
    return (tensor.data_type in DTYPES and tensor.data_type != TensorProto.STRING
            and not tensor.HasField("segment") and all(d >= 0 for d in tensor.dims)
            and math.prod(tensor.dims) > MAX_FOLDED_ELEMENTS)


def _little_endian(data_type: int) -> np.dtype:
    """ONNX stores raw_data little-endian whatever the host."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")


def _as_native(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # passes replace constants, never write into them
    if sys.byteorder == "little":
        return array
    return array.astype(array.dtype.newbyteorder("="))


def _expected_bytes(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims) * _little_endian(tensor.data_type).itemsize


def _check_length(tensor: onnx.TensorProto, length: int, where: str) -> None:
    expected = _expected_bytes(tensor)
    if length != expected:
        raise FrontendError(f"initializer {tensor.name!r} declares dims {list(tensor.dims)} "
                            f"but its data does not match them ({where} holds {length} bytes, "
                            f"the dims need {expected})")


def _mapped(mapped: mmap.mmap, offset: int, length: int, tensor: onnx.TensorProto,
            where: str) -> np.ndarray:
    _check_length(tensor, length, f"{where} at offset {offset}")
    array = np.frombuffer(mapped, _little_endian(tensor.data_type),
                          math.prod(tensor.dims), offset)
    return _as_native(array.reshape(tuple(tensor.dims)))


def _replace_by_inputs(proto: onnx.ModelProto, indices: set[int]) -> None:
    """Initializers at `indices` leave the graph; a graph input of their type and shape stands
    in for each (models of IR version 3 and older list every initializer as an input already)."""
    if not indices:
        return
    graph = proto.graph
    listed = {value.name for value in graph.input}
    kept, stand_ins = [], []
    for index, tensor in enumerate(graph.initializer):
        if index not in indices:
            kept.append(tensor)
        elif tensor.name not in listed:
            stand_ins.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                           list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(stand_ins)


# The protobuf wire format, just enough to skip raw_data without parsing it.
def _varint(view: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise _Malformed
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(view: memoryview, start: int, end: int):
    """(field number, wire type, field start, payload start, payload end) of each field."""
    position = start
    while position < end:
        tag, payload = _varint(view, position)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, stop = _varint(view, payload)
        elif wire == _FIXED64:
            stop = payload + 8
        elif wire == _FIXED32:
            stop = payload + 4
        elif wire == _LENGTH:
            length, payload = _varint(view, payload)
            stop = payload + length
        else:  # groups: not in onnx.proto
            raise _Malformed
        if stop > end or number == 0:
            raise _Malformed
        yield number, wire, position, payload, stop
        position = stop


def _strip_model(view: memoryview) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """The model's bytes without the raw_data of large initializers, and where each of those
    lies in the file: initializer index (in the parsed graph) -> (offset, length)."""
    out, spans, counter = [], {}, [0]
    for number, wire, start, payload, stop in _fields(view, 0, len(view)):
        if number == _MODEL_GRAPH and wire == _LENGTH:
            body = _strip_graph(view, payload, stop, spans, counter)
            out += [_encode_varint(number << 3 | wire), _encode_varint(len(body)), body]
        else:
            out.append(view[start:stop].tobytes())
    return b"".join(out), spans


def _strip_graph(view, start, end, spans, counter) -> bytes:
    out = []
    for number, wire, field_start, payload, stop in _fields(view, start, end):
        if number == _GRAPH_INITIALIZER and wire == _LENGTH:
            span = _raw_data_span(view, payload, stop)
            if span is not None:
                spans[counter[0]] = (span[2], span[3] - span[2])
                body = view[payload:span[0]].tobytes() + view[span[1]:stop].tobytes()
                out += [_encode_varint(number << 3 | wire), _encode_varint(len(body)), body]
                counter[0] += 1
                continue
            counter[0] += 1
        out.append(view[field_start:stop].tobytes())
    return b"".join(out)


def _raw_data_span(view, start, end) -> tuple[int, int, int, int] | None:
    """(field start, field end, data start, data end) of a tensor's raw_data when it is worth
    detaching: numeric, over MAX_FOLDED_ELEMENTS elements, raw_data its only value field and
    exactly as long as its dims say (anything else stays for the checker to report)."""
    dims, data_type, raw, others = [], None, None, False
    for number, wire, field_start, payload, stop in _fields(view, start, end):
        if number == _TENSOR_DIMS:
            if wire == _LENGTH:  # packed
                position = payload
                while position < stop:
                    value, position = _varint(view, position)
                    dims.append(value)
            elif wire == _VARINT:
                dims.append(_varint(view, payload)[0])
        elif number == _TENSOR_DATA_TYPE and wire == _VARINT:
            data_type = _varint(view, payload)[0]
        elif number == _TENSOR_RAW_DATA and wire == _LENGTH:
            if raw is not None:
                others = True  # a repeated singular field: protobuf keeps the last; keep it all
            raw = (field_start, stop, payload, stop)
        elif number in _TENSOR_OTHER_DATA:
            others = True
    if raw is None or others or data_type not in DTYPES or data_type == TensorProto.STRING:
        return None
    if any(d >= 1 << 63 for d in dims):  # negative int64
        return None
    elements = math.prod(dims)
    if elements <= MAX_FOLDED_ELEMENTS \
            or raw[3] - raw[2] != elements * _little_endian(data_type).itemsize:
        return None
    return raw
