"""Which ONNX operators sparsec imports, and how their opset versions are normalised.

`RUNTIME_OPS` are operators with kernels (the codegen kernel table covers each, a test checks it).
Any other standard operator is accepted only where every input is a compile-time constant, so that
`fold_constants` evaluates it away (shape arithmetic, Constant nodes, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsec.compiler.ir import Graph, Node, Tensor

ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "Pow")
COMPARISONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")  # -> bool
LOGICAL_BINARY = ("And", "Or", "Xor")  # bool x bool -> bool
# Need only their input's shape, which is static: fold_constants evaluates them away.
SHAPE_OPS = ("Shape", "Size")
ELEMENTWISE_UNARY = ("Relu", "Sigmoid", "Tanh", "Clip", "Sqrt", "Erf", "Exp", "Neg", "Gelu",
                     "Not")
FLOAT_ONLY = ("Sigmoid", "Tanh", "Sqrt", "Erf", "Exp", "Gelu")  # libm functions
COPY_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
# The operators around convolutions in CNNs: pooling over NCHW planes, per-channel batch
# normalisation (inference), padding, nearest-neighbour resizing and the hard activations.
POOL_OPS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")
# Activations with attributes (alpha, beta, gamma) or none, element by element; PRelu's slope
# is a second input, broadcast to X.
PARAMETRIC_ACTIVATIONS = ("HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus")
CNN_OPS = POOL_OPS + ("BatchNormalization", "Pad", "Resize", "PRelu") + PARAMETRIC_ACTIVATIONS

RUNTIME_OPS = frozenset(
    ("MatMul", "Gemm", "Transpose", "Softmax", "ReduceMean", "LayerNormalization", "Gather",
     "Cast", "Where", "Concat", "Expand", "Slice", "MatMulInteger", "DynamicQuantizeLinear",
     "QuantizeLinear", "DequantizeLinear", "CumSum", "GatherElements", "GatherND", "IsNaN")
    + ELEMENTWISE_BINARY + COMPARISONS + LOGICAL_BINARY + ELEMENTWISE_UNARY + COPY_OPS
    + CNN_OPS
)

# Operators the frontend accepts that are rewritten into the ops below before kernels are
# chosen: Conv becomes Im2Col + Dense (or DepthwiseConv) in lower_conv (which also folds a
# BatchNormalization after a Conv into its weights); Split becomes one Slice per output at
# import (compiler/split_slices.py).
LOWERED_OPS = frozenset(("Conv", "Split"))

# Ops that only passes create; they never come from a model.
DENSE = "Dense"  # act(alpha * X . W + beta * bias), W 2-D; X's leading dims flattened into rows
# (absorb_patches: X is a conv's input, read as its patches; absorb_residual: a fourth input
# of the output's shape is added before the activation)

# softmax(scale(A . B) + mask) . V over the batch dimensions, one kernel that keeps the score
# rows in L1: inputs A [..., M, K], B [..., K, N], V [..., N, D], mask (broadcasts to the
# scores [..., M, N]) or ""; attrs scale_op ("Mul", "Div" or "") and scale (a float);
# a_perm / v_perm / y_perm when a Transpose was folded in: A is transpose(input 0, a_perm),
# V likewise, and output 0 is transpose(result, y_perm).
ATTENTION = "Attention"

# LayerNormalization of a + b (a residual Add whose only reader is the LayerNormalization):
# inputs a, b (same shape), scale, bias or ""; attrs as LayerNormalization's.
ADD_LAYER_NORM = "AddLayerNorm"

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Clip")

# Im2Col: the patch matrix of a 2-D convolution over X [N, C, H, W], channels first:
# [N, kh*kw*C, Ho*Wo] (N == 1: [kh*kw*C, Ho*Wo]); row (i*kw + j)*C + c holds tap (i, j) of
# channel c for every output pixel, zero where the tap falls in the padding. attrs:
# kernel (kh, kw), strides, dilations, pads (top, left, bottom, right), out (Ho, Wo).
# Taps first, so that a K chunk of a token-tile kernel lies within one tap when it reads the
# patches straight from X (absorb_patches).
IM2COL = "Im2Col"

# DepthwiseConv: a Conv with one filter per channel (group == C == M), NCHW in and out:
# inputs X, W [C, 1, kh, kw], bias or ""; attrs as Im2Col's plus activation and
# activation_params (as Dense's: "", "Relu" or "Clip").
DEPTHWISE_CONV = "DepthwiseConv"

# Ops that multiply their activations by a constant weight matrix. Dense is the one the passes
# make: lower_conv rewrites a Conv's kernel as Dense's (kh*kw*C) x M weight, taps first.
WEIGHTED_OPS = frozenset((DENSE,))


def weight_view(graph: Graph, node: Node) -> Tensor | None:
    """The constant K x N matrix `node` multiplies its activations by (K features into N
    outputs), which sparsity detection, reordering, quantization and analyze read: None for
    an op without a weight, and for a Dense whose B is a run-time tensor."""
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 2 or not node.inputs[1]:
        return None
    weight = graph.tensors[node.inputs[1]]
    return weight if weight.is_constant and len(weight.shape) == 2 else None
