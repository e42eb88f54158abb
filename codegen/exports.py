"""A library's API under its model's own names (`--name PREFIX`), so that two models link
into one program: every `sparsec_X` function of sparsec.h is exported as `PREFIX_X` (a
wrapper in model.c), a linker version script keeps every other symbol local, and the model
header's macros and tables are `PREFIX_MODEL_*` and `PREFIX_model_*`. The function list is
read from sparsec.h itself, so a new API function is renamed with no change here."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from sparsec.errors import SparsecError

_DECLARATION = re.compile(r"SPARSEC_API\s+([^;{}]*?)\bsparsec_(\w+)\s*\(([^;]*?)\)\s*;", re.S)


@dataclass(frozen=True)
class ApiFunction:
    returns: str  # "int", "const char *", "void", ...
    name: str  # without the sparsec_ prefix
    params: str  # as declared, "void" for none

    def arguments(self) -> str:
        """The parameters' names, comma-separated, to pass them on."""
        if self.params.strip() == "void":
            return ""
        return ", ".join(re.search(r"(\w+)\s*$", param).group(1)
                         for param in self.params.split(","))


@functools.lru_cache(maxsize=1)
def api_functions() -> tuple[ApiFunction, ...]:
    header = (resources.files("sparsec.runtime_c") / "sparsec.h").read_text()
    functions = tuple(ApiFunction(" ".join(returns.split()), name, " ".join(params.split()))
                      for returns, name, params in _DECLARATION.findall(header))
    if not functions:
        raise SparsecError("sparsec.h declares no API functions: the runtime is damaged")
    return functions


def wrappers_c(prefix: str) -> str:
    """model.c's tail: each API function under `prefix`, calling the runtime's."""
    lines = [f"/* --name {prefix}: the API as {prefix}_*; the linker exports only these "
             "(exports.map) */", "#define SPARSEC_BUILDING_LIBRARY 1", '#include "sparsec.h"']
    for function in api_functions():
        call = f"sparsec_{function.name}({function.arguments()})"
        body = f"{call};" if function.returns == "void" else f"return {call};"
        lines.append(f"SPARSEC_API {function.returns} {prefix}_{function.name}"
                     f"({function.params}) {{ {body} }}")
    return "\n".join(lines) + "\n"


def declarations_h(prefix: str) -> str:
    """The prefixed functions' declarations, for the model header."""
    return "\n".join(f"{function.returns} {prefix}_{function.name}({function.params});"
                     for function in api_functions()) + "\n"


def version_script(prefix: str) -> str:
    return f"{{\n  global: {prefix}_*;\n  local: *;\n}};\n"
