"""Template parameters for the per-element and per-channel operators around convolutions:
BatchNormalization (inference), the parametric activations, and the two operators that move
elements by a per-axis index map, Pad and Resize (nearest).

Pad's pads and Resize's scales or sizes are inputs: constants come from the weight blob, a
run-time one is read when the kernel runs; either way the kernel checks that they give the
compiled output shape and stops the run with a message naming the node if they do not (as
Slice's bounds are checked).
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.codegen.cnames import c_string_literal
from sparsec.codegen.loops import contiguous_strides
from sparsec.codegen.request import KernelRequest
from sparsec.compiler.ir import Graph, Node
from sparsec.errors import KernelNotFoundError


def _refuse(req: KernelRequest, why: str) -> KernelNotFoundError:
    return KernelNotFoundError(f"node {req.node.name!r} (op {req.node.op}): {why}")


def batch_norm_params(req: KernelRequest) -> dict:
    """Inference BatchNormalization: per channel y = x * a + b with a = scale / sqrt(var + eps)
    and b = bias - mean * a, formed once per run in the element type as onnxruntime forms
    them (its results to the last bit for the same inputs)."""
    node, x, y = req.node, req.input(0), req.output()
    if node.attrs.get("training_mode", 0):
        raise _refuse(req, "training_mode=1 (batch statistics and running-mean outputs); "
                           "sparsec compiles inference graphs: export the model in eval mode")
    if len([name for name in node.outputs if name]) > 1:
        raise _refuse(req, "the running mean and variance outputs (training); sparsec "
                           "compiles inference graphs")
    if not node.attrs.get("spatial", 1):
        raise _refuse(req, "spatial=0 (statistics per element, opset 7-8); sparsec takes "
                           "statistics per channel")
    if len(x.shape) < 2:
        raise _refuse(req, f"an input of rank {len(x.shape)}; ONNX normalises N x C x ...")
    channels = x.shape[1]
    statistics = [req.input(i) for i in range(1, 5)]
    for tensor in statistics:
        if tensor is None or tensor.dtype != x.dtype or tensor.size != channels:
            raise _refuse(req, "scale, bias, mean and variance must each hold one "
                               f"{x.dtype} per channel ({channels})")
    for tensor in [x, *statistics, y]:
        req.take(tensor)
    return {"ctype": CTYPES[y.dtype], "batch": x.shape[0], "channels": channels,
            "inner": int(np.prod(x.shape[2:])),
            "epsilon": c_literal(node.attrs.get("epsilon", 1e-5), y.dtype),
            "sqrt": "sqrtf" if y.dtype == "float32" else "sqrt"}


def parametric_activation_params(req: KernelRequest) -> dict:
    """compiler.ops.PARAMETRIC_ACTIVATIONS for the elementwise unary template, with ONNX's
    defaults: HardSigmoid max(0, min(1, alpha x + beta)) and HardSwish x times it (alpha 1/6,
    beta 1/2); LeakyRelu alpha x below 0; Elu alpha (e^x - 1) below 0; Selu gamma x above 0,
    gamma alpha (e^x - 1) at or below; Softplus ln(1 + e^x), as max(x, 0) + ln(1 + e^-|x|)
    so that e^x never overflows. NaN propagates: every comparison fails on it."""
    x, y = req.input(0), req.output()
    req.take(x)
    req.take(y)
    op, attrs, dtype = req.node.op, req.node.attrs, y.dtype
    ctype = CTYPES[dtype]
    f = "f" if ctype == "float" else ""  # libm's float variants

    def literal(name: str, default: float) -> str:
        return c_literal(attrs.get(name, default), dtype)

    zero, one = c_literal(0, dtype), c_literal(1, dtype)
    if op in ("HardSigmoid", "HardSwish"):
        swish = op == "HardSwish"
        alpha = c_literal(1 / 6, dtype) if swish else literal("alpha", 0.2)
        beta = c_literal(0.5, dtype) if swish else literal("beta", 0.5)
        statements = [f"{ctype} t = {alpha} * v + {beta};",
                      f"t = t < {zero} ? {zero} : t;", f"t = t > {one} ? {one} : t;",
                      "v = v * t;" if swish else "v = t;"]
    elif op == "LeakyRelu":
        statements = [f"v = v < {zero} ? {literal('alpha', 0.01)} * v : v;"]
    elif op == "Elu":
        statements = [f"v = v < {zero} ? {literal('alpha', 1.0)} * expm1{f}(v) : v;"]
    elif op == "Selu":
        alpha, gamma = literal("alpha", 1.67326319217681884765625), literal(
            "gamma", 1.05070102214813232421875)
        statements = [f"v = v > {zero} ? {gamma} * v : {gamma} * {alpha} * expm1{f}(v);"]
    else:  # Softplus
        statements = [f"v = (v > {zero} ? v : {zero}) + log1p{f}(exp{f}(-fabs{f}(v)));"]
    return {"ctype": ctype, "count": y.size, "bound_args": [], "statements": statements,
            "vector_function": ""}


def _axes_literal(req: KernelRequest, axes, rank: int) -> list[int]:
    axes = [int(a) for a in axes]
    normal = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in normal) or len(set(normal)) != len(normal):
        raise _refuse(req, f"axes {axes} for a tensor of rank {rank}")
    return normal


def _gather_params(req: KernelRequest, x, y) -> dict:
    """What the per-axis map gather (templates/x-resample/gather.j2) needs."""
    rank = len(x.shape)
    return {"ctype": CTYPES[y.dtype], "rank": rank, "input_dims": list(x.shape),
            "output_dims": list(y.shape), "input_strides": contiguous_strides(x.shape),
            "map_offsets": [int(sum(y.shape[:d])) for d in range(rank)],
            "outer": int(np.prod(y.shape[:-1])), "node_literal": c_string_literal(req.node.name)}


def map_scratch(graph: Graph, node: Node) -> int:
    """Pad's and Resize's index maps, one int64 per output index of every axis: in the arena,
    not on the stack, where a long axis would overflow it."""
    return 8 * max(1, sum(graph.tensors[node.outputs[0]].shape))


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def pad_params(req: KernelRequest) -> dict:
    """Pad (opset 2's attributes, or 11+'s pads, constant_value and 18+'s axes inputs); a
    negative pad crops. Reflect mirrors again past the far edge, as numpy.pad does."""
    node, x, y = req.node, req.input(0), req.output()
    mode = node.attrs.get("mode", "constant")
    if mode not in PAD_MODES:
        raise _refuse(req, f"mode {mode!r}; ONNX defines {', '.join(PAD_MODES)}")
    rank = len(x.shape)
    if rank == 0:
        raise _refuse(req, "a scalar input; there is no axis to pad")
    if mode != "constant" and 0 in x.shape and x.size != y.size:
        raise _refuse(req, f"{mode} padding of an empty axis: there is no element to repeat")
    req.checked = True
    req.take(x)
    params = _gather_params(req, x, y)
    if req.graph.opset < 11:
        pads = [int(p) for p in node.attrs.get("pads", [])]
        if len(pads) != 2 * rank:
            raise _refuse(req, f"pads {pads} for a tensor of rank {rank} (needs {2 * rank})")
        value = c_literal(node.attrs.get("value", 0.0), y.dtype)
        axes = list(range(rank))
        params.update(pads_literal=pads, pads_count=len(pads) // 2, axes_literal=axes,
                      has_axes=False, has_value=False, value=value)
    else:
        pads, value, axes = req.input(1), req.input(2), req.input(3)
        req.take(pads)
        has_value = value is not None and value.size == 1
        if value is not None and value.size not in (0, 1):
            raise _refuse(req, f"constant_value of {value.size} elements; ONNX takes a scalar")
        if has_value:
            req.take(value)
        if axes is not None and axes.is_constant:
            axes_literal = _axes_literal(req, axes.data.reshape(-1), rank)
        elif axes is None:
            axes_literal = list(range(rank))
        else:
            axes_literal = []
            req.take(axes)
        count = axes.size if axes is not None else rank
        if count == 0:
            raise _refuse(req, "an empty axes input; there is nothing to pad")
        if pads.size != 2 * count:
            raise _refuse(req, f"pads of {pads.size} values for {count} axes (needs "
                               f"{2 * count})")
        axes_ctype = CTYPES[axes.dtype] if axes is not None else ""
        params.update(pads_literal=[], pads_count=count, axes_literal=axes_literal,
                      has_axes=not axes_literal, axes_ctype=axes_ctype,
                      has_value=has_value, value=c_literal(0, y.dtype))
    req.take(y)
    params["mode"] = mode
    return params


# Not tf_half_pixel_for_nearest (opset 11-12 only): neither onnxruntime nor ONNX's reference
# evaluator runs it any more, so there is nothing to check a kernel against.
RESIZE_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                     "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize_params(req: KernelRequest) -> dict:
    """Resize, mode nearest (opset 11+), with scales or sizes (and 18+'s axes and
    keep_aspect_ratio_policy). Coordinates are computed in float as onnxruntime does."""
    node, x, y = req.node, req.input(0), req.output()
    attrs = node.attrs
    mode = attrs.get("mode", "nearest")
    if mode != "nearest":
        raise _refuse(req, f"mode {mode!r}; sparsec resizes by nearest neighbour only")
    if req.graph.opset < 11:
        raise _refuse(req, "Resize before opset 11 (its coordinates differ); convert the "
                           "model with onnx.version_converter")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    if transform not in RESIZE_TRANSFORMS:
        raise _refuse(req, f"coordinate_transformation_mode {transform!r}; sparsec takes "
                           f"{', '.join(RESIZE_TRANSFORMS)}")
    rounding = attrs.get("nearest_mode", "round_prefer_floor")
    if rounding not in NEAREST_MODES:
        raise _refuse(req, f"nearest_mode {rounding!r}; ONNX defines "
                           f"{', '.join(NEAREST_MODES)}")
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise _refuse(req, f"keep_aspect_ratio_policy {policy!r}")
    rank = len(x.shape)
    scales, sizes = req.input(2), req.input(3)
    scales = scales if scales is not None and scales.size else None
    if (scales is None) == (sizes is None):
        raise _refuse(req, "needs exactly one of scales and sizes")
    given = scales if scales is not None else sizes
    axes = _axes_literal(req, attrs.get("axes") or range(rank), rank)
    if given.size != len(axes):
        raise _refuse(req, f"{'scales' if scales is not None else 'sizes'} of {given.size} "
                           f"values for {len(axes)} axes")
    if scales is not None and scales.dtype != "float32":
        raise _refuse(req, f"scales of {scales.dtype}; ONNX's are float32")
    req.checked = True
    req.take(x)
    req.take(given)
    req.take(y)
    return {**_gather_params(req, x, y), "by_sizes": sizes is not None, "axes": axes,
            "transform": transform, "rounding": rounding, "policy": policy,
            "mode": "resize"}
