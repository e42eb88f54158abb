"""The only ways text reaches generated C: identifiers from indices, and escaped string literals.

Model files are untrusted, so no name, doc string or attribute from a model is ever spliced into
C source. Identifiers are made from the position of the thing they name; model text appears only
inside string literals built by `c_string_literal`.
"""

from __future__ import annotations

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                  " _-.,:;=+()[]{}<>@#!$%^&|~`'")


def tensor_var(index: int) -> str:
    return f"t{int(index)}"


def node_fn(index: int, kernel_symbol: str, plan: int = 0) -> str:
    """The function for node `index` of plan `plan` (plans after the first name theirs, so
    that the plans of one library coexist): kernel symbols are fixed strings from the kernel
    table."""
    assert kernel_symbol.replace("_", "").isalnum(), kernel_symbol
    return f"{kernel_symbol}__{f'plan{int(plan)}_' if plan else ''}node{int(index)}"


def plan_fn(plan: int) -> str:
    """The run function of plan `plan` (runtime_c/sparsec_model.h: sparsec__plans)."""
    return f"sparsec__model_run_plan{int(plan)}"


def part_fn(plan: int, part: int) -> str:
    """Part `part` of plan `plan`'s run function (a bounded run of its calls)."""
    return f"{plan_fn(plan)}_part{int(part)}"


def unit_entry_fn(plan: int, first_part: int) -> str:
    """The function of a translation unit that runs plan `plan`'s parts from `first_part` on
    (as many as the unit holds)."""
    return f"{plan_fn(plan)}_from_part{int(first_part)}"


def c_string_literal(text: str, chunk: int = 200, *, in_macro: bool = False) -> str:
    """A C string literal holding `text` as UTF-8, safe against every lexical trap.

    Everything but a conservative set of printable ASCII is written as a three-digit octal
    escape (fixed width, so a following digit cannot extend it). `?` is escaped to defeat
    trigraphs, `"` and `\\` are escaped, so a quote, comment opener, backslash-newline or
    `#include` inside the text stays inert. Long text is split into adjacent literals.
    """
    atoms = [chr(b) if chr(b) in _SAFE else f"\\{b:03o}" for b in text.encode("utf-8")]
    if not atoms:
        return '""'
    # Split between atoms, never inside an escape; a #define continues with backslash-newline.
    joiner = " \\\n    " if in_macro else "\n    "
    return joiner.join('"' + "".join(atoms[i:i + chunk]) + '"'
                           for i in range(0, len(atoms), chunk))
