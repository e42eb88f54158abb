"""sparsec: an ahead-of-time compiler for sparse (pruned) neural networks.

    path = sparsec.compile("model.onnx", target="native", output="build/model.so")
    module = sparsec.load(path)
    outputs = module.run({"x": x})
"""

from typing import TYPE_CHECKING

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
from sparsec.module import Module, load
from sparsec.version import __version__

if TYPE_CHECKING:
    from sparsec.api import CompileResult, compile, compile_model

# The compiler (onnx, jinja2 and the passes) loads on first use: running a built library
# needs only numpy and cffi, and `import sparsec` took 1.1 s for onnx alone.
_COMPILER_NAMES = ("CompileResult", "compile", "compile_model")


def __getattr__(name: str):
    if name in _COMPILER_NAMES:
        try:
            from sparsec import api
        except ImportError as error:  # a deployment with numpy and cffi only
            raise ImportError(f"sparsec.{name} needs the compiler's packages (onnx, jinja2: "
                              f"pip install sparsec); loading and running built libraries "
                              f"does not: {error}") from error
        return getattr(api, name)
    raise AttributeError(f"module 'sparsec' has no attribute {name!r}")

__all__ = [
    "BuildError", "CompileResult", "FrontendError", "InputError", "KernelNotFoundError",
    "LoadError", "Module", "ShapeError", "SparsecError", "UnsupportedOperatorError",
    "UnsupportedTargetError", "__version__", "compile", "compile_model", "load",
]
