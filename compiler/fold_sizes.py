"""How large a constant node's results will be, computed from its inputs' values before the node
is evaluated.

ONNX shape inference predicts most results, but not all: it gives up on inputs the reference
evaluator still accepts (a `Range` bound of shape [1] instead of a scalar), and leaves a
dimension unknown where the specification does not pin it. Every operator whose result size
depends on its inputs' values, or that can multiply sizes (broadcasting, outer products), has a
rule here in Python integers, so no hostile value can wrap the arithmetic. A rule gives an upper
bound per output, exact where that is cheap; evaluation itself reports malformed inputs.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable

import numpy as np
import onnx

UNBOUNDED = 1 << 80
"""The element count given for a size that is infinite or not a number (Range to inf, a NaN
scale): larger than any limit, so such a node is refused."""

CONTROL_FLOW = ("If", "Loop", "Scan", "SequenceMap")
"""Ops that run a subgraph: neither its intermediates nor a loop's trip cost can be bounded
before it runs."""

UNPREDICTABLE = CONTROL_FLOW + ("ImageDecoder",)  # a small PNG can declare gigapixels

_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "PRelu", "Max", "Min",
                "Sum", "Mean", "BitwiseAnd", "BitwiseOr", "BitwiseXor")
_BOOLEAN = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor")
_SAME_SIZE = ("Reshape", "Slice", "CumSum", "Trilu", "EyeLike", "ReverseSequence",
              "ScatterND", "ScatterElements", "Scatter", "Compress", "Identity", "Cast", "CastLike",
              "Transpose", "Flatten", "Squeeze", "Unsqueeze")
_FLOAT_TYPE = onnx.TensorProto.FLOAT

Outputs = list[tuple[int, int]]  # (elements, bytes per element) per output


def predict(node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> Outputs | None:
    """Upper bounds on `node`'s outputs given its input values (None for an omitted optional
    input); None when no rule covers the op, which leaves it to ONNX shape inference."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    rule = _RULES.get(node.op_type)
    if node.op_type == "Split":
        rule = functools.partial(_split, parts=len(node.output))
    elif node.op_type in _ELEMENTWISE + _BOOLEAN + ("Where",):
        rule = _broadcasting
    elif node.op_type in _SAME_SIZE:
        rule = _same_size
    if rule is None:
        return None
    try:
        bounds = rule(node.op_type, attrs, inputs)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        return None  # malformed inputs: inference predicts what it can, evaluation refuses
    return None if bounds is None else bounds[:len(node.output)]


def _broadcasting(op, attrs, inputs) -> Outputs:
    shapes = [x.shape for x in inputs if x is not None]
    itemsize = 1 if op in _BOOLEAN else _itemsize(inputs[1] if op == "Where" else inputs[0])
    return [(math.prod(broadcast(*shapes)), itemsize)]


def _same_size(op, attrs, inputs) -> Outputs:
    """As many elements as the input; of another type for the casts."""
    data = inputs[0]
    if op == "CastLike":
        return [(data.size, _itemsize(inputs[1]))]
    to = attrs.get({"Cast": "to", "EyeLike": "dtype"}.get(op, ""))
    if to is not None:
        return [(data.size, _tensor_type_size(to))]
    return [(data.size, _itemsize(data))]


def broadcast(*shapes) -> list[int]:
    """Numpy's broadcast shape, as an upper bound: the larger of two dims (evaluation refuses
    dims that do not broadcast)."""
    rank = max((len(s) for s in shapes), default=0)
    padded = [(1,) * (rank - len(s)) + tuple(int(d) for d in s) for s in shapes]
    return [max(dims) for dims in zip(*padded)] if padded else []


def _scalar(value: np.ndarray | None, default=0):
    """The one value of a scalar input; the first of a longer one (evaluation refuses those)."""
    if value is None or value.size == 0:
        return default
    item = value.reshape(-1)[0].item()
    if isinstance(item, float) and not math.isfinite(item):
        return math.inf
    return item


MAX_RANK = 64  # numpy's


def _values(value: np.ndarray | None) -> list:
    """A shape, pads, scales or sizes input as Python numbers. Longer than any rank's pads, it
    is malformed: refused here before a hostile length becomes a list of Python objects."""
    if value is None:
        return []
    if value.size > 2 * MAX_RANK:
        raise ValueError(f"{value.size} entries where a shape's or pads' are expected")
    return [v.item() for v in value.reshape(-1)]


def _count(value) -> int:
    """A non-negative element count from a (possibly float, possibly infinite) size."""
    if isinstance(value, float):
        return UNBOUNDED if not math.isfinite(value) else max(math.ceil(value), 0)
    return max(int(value), 0)


def _itemsize(value: np.ndarray | None, default: int = 4) -> int:
    return default if value is None else value.dtype.itemsize


def _tensor_type_size(elem_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _range(op, attrs, inputs) -> Outputs:
    itemsize = _itemsize(inputs[0])
    start, limit, delta = (_scalar(x) for x in inputs[:3])
    if any(isinstance(v, float) and not math.isfinite(v) for v in (start, limit, delta)):
        return [(UNBOUNDED, itemsize)]
    if delta == 0:
        return [(0, itemsize)]  # evaluation refuses a zero step
    if all(isinstance(v, int) for v in (start, limit, delta)):
        return [(_count(-((start - limit) // delta)), itemsize)]  # exact ceil division
    return [(_count((limit - start) / delta), itemsize)]


def _constant_of_shape(op, attrs, inputs) -> Outputs:
    value = attrs.get("value")
    itemsize = _tensor_type_size(value.data_type) if value is not None else 4
    return [(math.prod(_count(d) for d in _values(inputs[0])), itemsize)]


def _expand(op, attrs, inputs) -> Outputs:
    data, shape = inputs[0], [_count(d) for d in _values(inputs[1])]
    return [(math.prod(broadcast(data.shape, shape)), _itemsize(data))]


def _tile(op, attrs, inputs) -> Outputs:
    data, repeats = inputs[0], [_count(r) for r in _values(inputs[1])]
    rank = max(data.ndim, len(repeats))
    dims = (1,) * (rank - data.ndim) + data.shape
    repeats = [1] * (rank - len(repeats)) + repeats
    return [(math.prod(d * r for d, r in zip(dims, repeats)), _itemsize(data))]


def _pad(op, attrs, inputs) -> Outputs:
    data = inputs[0]
    pads = _values(inputs[1]) if len(inputs) > 1 and inputs[1] is not None \
        else list(attrs.get("pads", attrs.get("paddings", [])))
    axes = _values(inputs[3]) if len(inputs) > 3 and inputs[3] is not None \
        else list(range(data.ndim))
    dims = list(data.shape)
    for k, axis in enumerate(axes):
        if not -data.ndim <= axis < data.ndim or k + len(axes) >= len(pads):
            continue  # evaluation refuses the malformed pads
        dims[axis] = max(dims[axis] + int(pads[k]) + int(pads[k + len(axes)]), 0)
    return [(math.prod(dims), _itemsize(data))]


def _resize(op, attrs, inputs) -> Outputs:
    data, roi, sizes = inputs[0], None, []
    if op == "Upsample" or len(inputs) == 2:  # Upsample, Resize-10: (X, scales)
        scales = _values(inputs[1]) if len(inputs) > 1 else list(attrs.get("scales", []))
    else:
        roi = inputs[1]
        scales = _values(inputs[2]) if len(inputs) > 2 else []
        sizes = _values(inputs[3]) if len(inputs) > 3 else []
    axes = list(attrs.get("axes", range(data.ndim)))
    dims = list(data.shape)
    crop = 1.0  # tf_crop_and_resize scales the region of interest, which may exceed 1
    if attrs.get("coordinate_transformation_mode") == b"tf_crop_and_resize":
        crop = max([1.0] + [abs(float(v)) * 2 for v in _values(roi)])
    stretch = attrs.get("keep_aspect_ratio_policy", b"stretch") == b"stretch"
    if sizes and not stretch:  # one scale for every axis, then rounded
        ratios = [s / max(dims[a], 1) for a, s in zip(axes, sizes)]
        scales, sizes = [max(ratios, default=1.0)] * len(axes), []
    for k, axis in enumerate(axes):
        if not -data.ndim <= axis < data.ndim:
            continue
        if sizes and k < len(sizes):
            dims[axis] = _count(sizes[k])
        elif k < len(scales):
            dims[axis] = _count(dims[axis] * float(scales[k]) * crop) + (0 if stretch else 1)
    return [(math.prod(dims), _itemsize(data))]


def _one_hot(op, attrs, inputs) -> Outputs:
    indices, depth, values = inputs[:3]
    return [(indices.size * _count(_scalar(depth)), _itemsize(values))]


def _concat(op, attrs, inputs) -> Outputs:
    parts = [x for x in inputs if x is not None]
    return [(sum(x.size for x in parts), _itemsize(parts[0] if parts else None))]


def _non_zero(op, attrs, inputs) -> Outputs:
    return [(max(inputs[0].ndim, 1) * inputs[0].size, 8)]


def _gather(op, attrs, inputs) -> Outputs:
    data, indices = inputs[:2]
    if data.ndim == 0:
        return [(indices.size, _itemsize(data))]
    axis_len = data.shape[int(attrs.get("axis", 0)) % data.ndim]
    return [(indices.size * (data.size // axis_len if axis_len else 0), _itemsize(data))]


def _gather_elements(op, attrs, inputs) -> Outputs:
    return [(inputs[1].size, _itemsize(inputs[0]))]


def _gather_nd(op, attrs, inputs) -> Outputs:
    data, indices = inputs[:2]
    batch = int(attrs.get("batch_dims", 0))
    depth = indices.shape[-1] if indices.ndim else 0
    return [(math.prod(indices.shape[:-1]) * math.prod(data.shape[batch + depth:]),
             _itemsize(data))]


def _matmul(op, attrs, inputs) -> Outputs:
    a, b = (x.shape for x in inputs[:2])
    rows = a[-2] if len(a) >= 2 else 1
    cols = b[-1] if len(b) >= 2 else 1
    batch = broadcast(a[:-2], b[:-2])
    itemsize = 4 if op == "MatMulInteger" else _itemsize(inputs[0])
    return [(math.prod(batch) * rows * cols, itemsize)]


def _gemm(op, attrs, inputs) -> Outputs:
    a, b = (x.shape for x in inputs[:2])
    rows = (a[1] if attrs.get("transA") else a[0]) if len(a) == 2 else 1
    cols = (b[0] if attrs.get("transB") else b[1]) if len(b) == 2 else 1
    return [(rows * cols, _itemsize(inputs[0]))]


def _einsum(op, attrs, inputs) -> Outputs:
    """The output: the product of its labels' sizes. numpy's optimised einsum, which the
    reference evaluator calls, keeps intermediates no larger than its largest operand or
    output, so those are bounded too."""
    equation = attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    terms, _, out = equation.partition("->")
    sizes: dict[str, int] = {}
    ellipsis: list[tuple[int, ...]] = []
    for term, x in zip(terms.split(","), (x for x in inputs if x is not None)):
        labels = term.replace("...", "")
        spread = x.ndim - len(labels)
        if "..." in term:
            before = term.index("...")
            ellipsis.append(x.shape[before:before + spread])
            shape = x.shape[:before] + x.shape[before + spread:]
        else:
            shape = x.shape
        for label, dim in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), dim)
    if not _:  # implicit output: the labels used once, in order, after the ellipsis dims
        used = terms.replace("...", "").replace(",", "")
        out = "".join(sorted(c for c in set(used) if used.count(c) == 1
                             and c in string.ascii_letters))
    elements = math.prod(broadcast(*ellipsis)) if ellipsis else 1
    elements *= math.prod(sizes.get(label, 1) for label in out.replace("...", ""))
    return [(elements, _itemsize(inputs[0]))]


def _top_k(op, attrs, inputs) -> Outputs:
    data = inputs[0]
    k = _scalar(inputs[1]) if len(inputs) > 1 else attrs.get("k", 0)
    axis_len = data.shape[int(attrs.get("axis", -1)) % data.ndim] if data.ndim else 1
    elements = data.size // axis_len * min(_count(k), axis_len) if axis_len else 0
    return [(elements, _itemsize(data)), (elements, 8)]


def _unique(op, attrs, inputs) -> Outputs:
    return [(inputs[0].size, _itemsize(inputs[0]))] + [(inputs[0].size, 8)] * 3


def _split(op, attrs, inputs, parts: int) -> Outputs:
    """The parts' lengths along the axis: given (an input, or an attribute before opset 13),
    else equal, the last one shorter."""
    data = inputs[0]
    axis_len = data.shape[int(attrs.get("axis", 0)) % data.ndim] if data.ndim else 1
    lengths = _values(inputs[1]) if len(inputs) > 1 and inputs[1] is not None \
        else list(attrs.get("split", []))
    if not lengths and parts:
        part = -(-axis_len // parts)
        lengths = [part] * (parts - 1) + [max(axis_len - part * (parts - 1), 0)]
    row = data.size // axis_len if axis_len else 0
    return [(row * _count(length), _itemsize(data)) for length in lengths]


def _center_crop_pad(op, attrs, inputs) -> Outputs:
    data, shape = inputs[0], [_count(d) for d in _values(inputs[1])]
    axes = list(attrs.get("axes", range(data.ndim)))
    dims = list(data.shape)
    for axis, size in zip(axes, shape):
        if -data.ndim <= axis < data.ndim:
            dims[axis] = size
    return [(math.prod(dims), _itemsize(data))]


def _window(op, attrs, inputs) -> Outputs:
    itemsize = _tensor_type_size(attrs.get("output_datatype", _FLOAT_TYPE))
    return [(_count(_scalar(inputs[0])), itemsize)]


def _mel_weight_matrix(op, attrs, inputs) -> Outputs:
    bins, dft_length = _count(_scalar(inputs[0])), _count(_scalar(inputs[1]))
    itemsize = _tensor_type_size(attrs.get("output_datatype", _FLOAT_TYPE))
    return [((dft_length // 2 + 1) * bins, itemsize)]


def _dft(op, attrs, inputs) -> Outputs:
    """The transformed axis becomes `dft_length` points (half plus one when onesided) and the
    last axis two (real, imaginary). Opset 17 names the axis by attribute (default 1), opset
    20 by an input (default -2); without either, the larger result of the two."""
    data = inputs[0]
    rank = data.ndim
    if len(inputs) > 2 and inputs[2] is not None:
        axes = [int(_scalar(inputs[2]))]
    else:
        axes = [attrs["axis"]] if "axis" in attrs else [1, -2]
    length = inputs[1] if len(inputs) > 1 else None
    results = []
    for axis in axes:
        if not -rank <= axis < rank or axis % rank == rank - 1:
            continue  # not an axis, or the real/imaginary one: evaluation refuses it
        points = _count(_scalar(length)) if length is not None else data.shape[axis]
        if attrs.get("onesided", 0):
            points = points // 2 + 1
        dims = list(data.shape)
        dims[axis], dims[-1] = points, 2
        results.append(math.prod(dims))
    return [(max(results), _itemsize(data))] if results else None


def _stft(op, attrs, inputs) -> Outputs:
    """[batch, frames, bins, 2]: a frame every `frame_step` samples, `frame_length` (or the
    window's length) samples each, as many bins (half plus one when onesided, the default)."""
    signal, step = inputs[0], _count(_scalar(inputs[1]))
    window = inputs[2] if len(inputs) > 2 else None
    length = inputs[3] if len(inputs) > 3 else None
    batch, samples = signal.shape[0], signal.shape[1]
    frame = (_count(_scalar(length)) if length is not None
             else window.size if window is not None else samples)
    # a frame longer than the signal, or a step of 0, is refused by evaluation: bound by one
    # frame per sample
    frames = (samples - frame) // step + 1 if step > 0 and frame <= samples else samples
    bins = frame // 2 + 1 if attrs.get("onesided", 1) else frame
    return [(batch * frames * bins * 2, _itemsize(signal))]


def _col2im(op, attrs, inputs) -> Outputs:
    data, image = inputs[0], [_count(d) for d in _values(inputs[1])]
    channels = math.prod(data.shape[:2]) if data.ndim >= 2 else data.size
    return [(channels * math.prod(image), _itemsize(data))]


def _constant(op, attrs, inputs) -> Outputs:
    """The model file holds the values, except for a sparse tensor's zeros, which it only
    declares: a few bytes can declare a dense tensor of any size (onnx 1.23's evaluator
    refuses sparse constants, but need not stay so)."""
    for name, value in attrs.items():
        if name == "sparse_value":
            itemsize = _tensor_type_size(value.values.data_type)
            return [(math.prod(_count(d) for d in value.dims), itemsize)]
        if isinstance(value, onnx.TensorProto):
            return [(math.prod(value.dims), _tensor_type_size(value.data_type))]
        if isinstance(value, list):
            return [(len(value), 8)]
    return [(1, 8)]


def _max_unpool(op, attrs, inputs) -> Outputs | None:
    if len(inputs) < 3 or inputs[2] is None:
        return None  # the output shape follows the attributes: inference predicts it
    return [(math.prod(_count(d) for d in _values(inputs[2])), _itemsize(inputs[0]))]


def _affine_grid(op, attrs, inputs) -> Outputs:
    size = [_count(d) for d in _values(inputs[1])]
    spatial = size[2:]
    return [(size[0] * math.prod(spatial) * len(spatial) if size else 0,
             _itemsize(inputs[0]))]


_RULES: dict[str, Callable] = {
    "Range": _range, "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Tile": _tile,
    "Pad": _pad, "Resize": _resize, "Upsample": _resize, "OneHot": _one_hot,
    "Concat": _concat, "NonZero": _non_zero, "Gather": _gather,
    "GatherElements": _gather_elements, "GatherND": _gather_nd, "MatMul": _matmul,
    "MatMulInteger": _matmul, "Gemm": _gemm, "Einsum": _einsum, "TopK": _top_k,
    "Unique": _unique, "Split": _split, "CenterCropPad": _center_crop_pad,
    "HannWindow": _window, "HammingWindow": _window, "BlackmanWindow": _window,
    "MelWeightMatrix": _mel_weight_matrix, "Col2Im": _col2im, "MaxUnpool": _max_unpool,
    "AffineGrid": _affine_grid, "Constant": _constant, "DFT": _dft, "STFT": _stft,
}
