"""Template parameters for pooling over NCHW planes: MaxPool and AveragePool (1-D, 2-D and
3-D windows), GlobalMaxPool and GlobalAveragePool (any number of spatial axes).

Python resolves auto_pad, ceil_mode and the padding into per-axis numbers: for every kernel
column the range of output columns whose tap lands inside the input row, and for AveragePool
each output's divisor. The kernels then run branch-free loops contiguous over output columns,
which GCC vectorises for the target's ISA (a strided load where the stride is over 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.codegen.c_literals import CTYPES, c_literal
from sparsec.codegen.request import KernelRequest
from sparsec.errors import KernelNotFoundError

# Elements of output a pooling task computes: a few microseconds of work, so that handing it to
# a thread pays, and a 56 x 56 plane is one task.
POOL_ELEMENTS_PER_TASK = 4096


@dataclass(frozen=True)
class PoolAxis:
    """One spatial axis of a pooling window, padding resolved."""
    size: int  # input extent
    out: int  # output extent
    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int

    def source(self, out: int, tap: int) -> int:
        """The input index tap `tap` of output `out` reads (outside [0, size): padding)."""
        return out * self.stride + tap * self.dilation - self.pad_begin

    def tap_ranges(self) -> list[tuple[int, int, int]]:
        """Per tap: (first output, end output, input offset) over which the tap reads the
        input (offset: the input index at output 0, which may be negative)."""
        ranges = []
        for tap in range(self.kernel):
            inside = [o for o in range(self.out) if 0 <= self.source(o, tap) < self.size]
            first, end = (inside[0], inside[-1] + 1) if inside else (0, 0)
            ranges.append((first, end, self.source(0, tap)))
        return ranges

    def counts(self, include_pad: bool) -> list[int]:
        """AveragePool's divisor per output: its taps inside the input, or with
        count_include_pad inside the padded input (taps past it, which ceil_mode adds, never
        count), as onnxruntime and ONNX's reference divide."""
        low, high = (-self.pad_begin, self.size + self.pad_end) if include_pad else (0, self.size)
        return [sum(low <= self.source(o, t) < high for t in range(self.kernel))
                for o in range(self.out)]


def _refuse(req: KernelRequest, why: str) -> KernelNotFoundError:
    return KernelNotFoundError(f"node {req.node.name!r} (op {req.node.op}): {why}")


def pool_axes(req: KernelRequest) -> list[PoolAxis]:
    """The window's axes (D, H, W; a 1-D or 2-D pool gets unit ones first) from the
    attributes and the output shape inference gave."""
    node, x, y = req.node, req.input(0), req.output()
    spatial = len(x.shape) - 2
    if spatial not in (1, 2, 3):
        raise _refuse(req, f"a {spatial}-D window (input of shape {list(x.shape)}); sparsec "
                           "pools 1-D, 2-D and 3-D windows")
    attrs = node.attrs
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides") or [1] * spatial)
    dilations = list(attrs.get("dilations") or [1] * spatial)
    pads = list(attrs.get("pads") or [0] * 2 * spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if (len(kernel), len(strides), len(dilations), len(pads)) != (spatial,) * 3 + (2 * spatial,):
        raise _refuse(req, f"kernel_shape {kernel}, strides {strides}, dilations {dilations} "
                           f"and pads {pads} do not fit {spatial} spatial axes")
    if min(kernel + strides + dilations) < 1 or min(pads) < 0:
        raise _refuse(req, "kernel_shape, strides and dilations must be positive and pads "
                           "not negative")
    axes = []
    for d in range(spatial):
        size, out = x.shape[2 + d], y.shape[2 + d]
        window = (kernel[d] - 1) * dilations[d] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (out - 1) * strides[d] + window - size)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad in ("NOTSET", "VALID"):
            begin, end = (pads[d], pads[spatial + d]) if auto_pad == "NOTSET" else (0, 0)
        else:
            raise _refuse(req, f"auto_pad {auto_pad!r}; ONNX defines NOTSET, SAME_UPPER, "
                               "SAME_LOWER and VALID")
        axes.append(PoolAxis(size, out, kernel[d], strides[d], dilations[d], begin, end))
        if out < 1 or (out - 1) * strides[d] >= size + begin:
            # ONNX's shape inference keeps, with ceil_mode, a last window that starts in the
            # end padding; the operator's definition, its reference and onnxruntime drop it,
            # and the compiled shape cannot: refused rather than one row of a different shape
            raise _refuse(req, f"output extent {out} along spatial axis {d} makes the last "
                               "window start in the end padding (ONNX's shape inference "
                               "keeps it with ceil_mode, onnxruntime drops it); pad less at "
                               "the end or export without ceil_mode")
    unit = PoolAxis(1, 1, 1, 1, 1, 0, 0)
    return [unit] * (3 - spatial) + axes


# MaxPool keeps a row of column maxima on the stack up to this size; wider rows take every
# tap from the input instead.
SEPARABLE_ROW_BYTES = 16384


def pool_params(req: KernelRequest) -> dict:
    """MaxPool / AveragePool over planes of D x H x W; Indices (MaxPool's second output) and
    storage_order are refused: nothing in an inference graph reads them but MaxUnpool."""
    node, x, y = req.node, req.input(0), req.output()
    if len([name for name in node.outputs if name]) > 1:
        raise _refuse(req, "the Indices output; sparsec computes MaxPool's values only")
    if node.attrs.get("storage_order", 0):
        raise _refuse(req, "storage_order=1 (it only orders the Indices output, which sparsec "
                           "does not compute)")
    depth, rows, columns = pool_axes(req)
    average = node.op == "AveragePool"
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    planes = x.shape[0] * x.shape[1]
    req.take(x)
    req.take(y)
    lowest = max_pool_start(y.dtype)
    per_task = max(1, -(-POOL_ELEMENTS_PER_TASK // (depth.out * rows.out * columns.out)))
    taps = columns.tap_ranges()
    return {"ctype": CTYPES[y.dtype], "average": average, "planes": planes,
            "D": depth.size, "OD": depth.out, "KD": depth.kernel, "SD": depth.stride,
            "DD": depth.dilation, "PD": depth.pad_begin,
            "H": rows.size, "W": columns.size, "OH": rows.out, "OW": columns.out,
            "KH": rows.kernel, "SH": rows.stride, "DH": rows.dilation, "PT": rows.pad_begin,
            "KW": columns.kernel, "SW": columns.stride,
            "tap_first": [t[0] for t in taps], "tap_end": [t[1] for t in taps],
            "tap_offset": [t[2] for t in taps],
            "depth_counts": depth.counts(include_pad) if average else [],
            "row_counts": rows.counts(include_pad) if average else [],
            "column_counts": columns.counts(include_pad) if average else [],
            "init": c_literal(0, y.dtype) if average else lowest,
            "separable": not average and columns.size * np.dtype(y.dtype).itemsize
            <= SEPARABLE_ROW_BYTES,
            "PLANES_PER_TASK": per_task, "TASKS": -(-planes // per_task),
            "window": "x".join(str(a.kernel) for a in (depth, rows, columns)
                               if a.kernel > 1 or a is columns)}


def max_pool_start(dtype: str) -> str:
    """What a max starts from: the type's lowest finite value, as onnxruntime's pools start
    (a window wholly in the padding gives -FLT_MAX there, and so does a window of -inf), not
    -inf."""
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    return c_literal(info.min, dtype)


def global_pool_params(req: KernelRequest) -> dict:
    """GlobalMaxPool / GlobalAveragePool: one value per (n, c) plane of every spatial axis."""
    x, y = req.input(0), req.output()
    if len(x.shape) < 3:
        raise _refuse(req, f"an input of rank {len(x.shape)}; ONNX pools over N x C x spatial "
                           "axes (rank 3 or more)")
    planes = x.shape[0] * x.shape[1]
    length = int(np.prod(x.shape[2:]))
    req.take(x)
    req.take(y)
    average = req.node.op == "GlobalAveragePool"
    init = c_literal(0, y.dtype) if average else max_pool_start(y.dtype)
    per_task = max(1, -(-POOL_ELEMENTS_PER_TASK * 4 // max(length, 1)))
    return {"ctype": CTYPES[y.dtype], "average": average, "planes": planes, "length": length,
            "init": init, "PLANES_PER_TASK": per_task, "TASKS": -(-planes // per_task)}
