"""sparsec: an ahead-of-time compiler for sparse (pruned) neural networks.

    path = sparsec.compile("model.onnx", target="native", output="build/model.so")
    module = sparsec.load(path)
    outputs = module.run({"x": x})
"""

from sparsec.api import CompileResult, compile, compile_model  # noqa: E402
from sparsec.errors import (
                            BuildError,
                            FrontendError,
                            InputError,
                            KernelNotFoundError,
                            LoadError,
                            ShapeError,
                            SparsecError,
                            UnsupportedOperatorError,
                            UnsupportedTargetError,
)
from sparsec.module import Module, load  # noqa: E402
from sparsec.version import __version__

__all__ = [
    "BuildError", "CompileResult", "FrontendError", "InputError", "KernelNotFoundError",
    "LoadError", "Module", "ShapeError", "SparsecError", "UnsupportedOperatorError",
    "UnsupportedTargetError", "__version__", "compile", "compile_model", "load",
]
