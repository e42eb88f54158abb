"""Negative controls: a compiled model's C source with one C statement injected at the end of
its run function, rebuilt as sparsec builds it. Tests that claim to catch a class of bug
(sanitizers, memory growth) show that they catch one planted on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

from sparsec.codegen import build, targets


def patched_library(source_dir: Path, statement: str, build_dir: Path,
                    flags: tuple[str, ...] = ()) -> Path:
    """The generic-target source kept in `source_dir` (compile(..., keep_source=)) with
    `statement` run just before sparsec__model_run returns, built into `build_dir` with
    codegen/build.py's commands and `flags`."""
    source = (source_dir / "model.c").read_text()
    tail = "  return 0;\n}\n"
    at = source.rindex(tail)
    assert "sparsec__model_run" in source[:at], "the run function ends the generated source"
    build_dir.mkdir()
    (build_dir / "model.c").write_text("#include <stdlib.h>\n" + source[:at] + "  " + statement
                                       + "\n" + source[at:])
    for unit in source_dir.glob("unit-*.c"):  # a large model's other translation units
        shutil.copy(unit, build_dir / unit.name)
    shutil.copy(source_dir / "weights.bin", build_dir / "weights.bin")
    target = targets.resolve("generic")
    library = build_dir / "model.so"
    for argv in build.compile_commands(build.find_compiler(target), target, build_dir, library,
                                       flags):
        build._run(argv, build_dir)
    return library
