"""The one error hierarchy of sparsec.

Every user-facing failure is a `SparsecError`; the CLI prints its message as `sparsec: error: ...`
and exits non-zero. Messages name the culprit (node name and op type, pass, kernel key, compiler
command) and, where there is one, the fix.
"""

import sys


def user_stacklevel() -> int:
    """The `stacklevel` of a warning raised where this is called that names the first frame
    outside sparsec, the line of the user's code that called in: counted, not written by hand,
    so that a helper or a guard added on the way does not move it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("sparsec."):
        frame, level = frame.f_back, level + 1
    return level


class SparsecError(Exception):
    """Base of every error sparsec raises on purpose."""


class FrontendError(SparsecError):
    """The ONNX model cannot be read, checked or imported."""


class UnsupportedOperatorError(FrontendError):
    """One or more nodes use operators (or dtypes) sparsec cannot compile."""


class ShapeError(FrontendError):
    """A shape is dynamic, unknown or contradictory."""


class ResourceLimitError(FrontendError):
    """A tensor, a constant or the whole model would need more memory than the limit allows."""


class VerificationError(SparsecError):
    """The IR broke an invariant after a pass (a bug in sparsec, reported with the pass name)."""


class KernelNotFoundError(SparsecError):
    """No kernel in the table implements a node for the chosen target."""


class TemplateError(SparsecError):
    """A template's `require(...)` failed: a kernel was asked for parameters it cannot take."""


class BuildError(SparsecError):
    """The C compiler failed or is missing."""


class UnsupportedTargetError(SparsecError):
    """The target name is unknown, or the host cannot build or run it."""


class LoadError(SparsecError):
    """A compiled library cannot be loaded (missing file, wrong ABI, CPU lacks features)."""


class InputError(SparsecError):
    """Run-time inputs do not match the model (names, shapes, dtypes)."""


class RuntimeFailure(SparsecError):
    """The compiled library reported an error while running."""


class PortableKernelWarning(UserWarning):
    """A matrix product on a SIMD target runs a portable-C kernel (no kernel of the target's
    ISA fits it): the model compiles and is correct, but that layer may be many times slower
    than the rest. The message names the layer and why."""
