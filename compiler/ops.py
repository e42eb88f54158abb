"""Which ONNX operators sparsec imports, and how their opset versions are normalised.

`RUNTIME_OPS` are operators with kernels (the codegen kernel table covers each, a test checks it).
Any other standard operator is accepted only where every input is a compile-time constant, so that
`fold_constants` evaluates it away (shape arithmetic, Constant nodes, ...).
"""

from __future__ import annotations

ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "Pow")
ELEMENTWISE_UNARY = ("Relu", "Sigmoid", "Tanh", "Clip", "Sqrt", "Erf", "Exp", "Neg", "Gelu")
FLOAT_ONLY = ("Sigmoid", "Tanh", "Sqrt", "Erf", "Exp", "Gelu")  # libm functions
COPY_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")

RUNTIME_OPS = frozenset(
    ("MatMul", "Gemm", "Transpose", "Softmax", "ReduceMean", "LayerNormalization", "Gather",
     "Cast", "Where", "Equal", "Concat", "Expand", "Slice")
    + ELEMENTWISE_BINARY + ELEMENTWISE_UNARY + COPY_OPS
)

# Ops that only fuse creates; they never come from a model.
DENSE = "Dense"  # act(alpha * X . W + beta * bias), W 2-D; X's leading dims flattened into rows

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Clip")
