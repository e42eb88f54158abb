"""A built library's model info, read without loading it.

The info JSON lives in the library's own ELF section, `.sparsec_info`, so it reads the same
for a library the host cannot load: another architecture's (a cross-built arm-neon library on
an x86 host), or one whose CPU features the host lacks. pyelftools reads the section headers
(a well-kept pure-Python ELF reader, rather than parsing them by hand here). A library built
before the section existed is asked through its info function instead, which needs no CPU
feature but must be loadable.
"""

from __future__ import annotations

import json
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sparsec.errors import SparsecError

INFO_SECTION = ".sparsec_info"


def read_info(path: Path) -> dict:
    if not path.is_file():
        raise SparsecError(f"no compiled model at {path}")
    try:
        with path.open("rb") as file:
            section = ELFFile(file).get_section_by_name(INFO_SECTION)
            data = section.data() if section is not None else None
    except (ELFError, OSError, ValueError) as exc:
        raise SparsecError(f"{path} is not a sparsec library: {exc}") from None
    if data is None:
        return _info_by_loading(path)
    try:
        return json.loads(data.rstrip(b"\0").decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparsecError(f"{path}: its {INFO_SECTION} section is not model info: {exc}") \
            from None


def _info_by_loading(path: Path) -> dict:
    from sparsec.module import _ffi

    try:
        lib = _ffi().dlopen(str(path.resolve()))
        return json.loads(_ffi().string(lib.sparsec_model_info()).decode())
    except (OSError, AttributeError) as exc:
        raise SparsecError(f"{path} is not a sparsec library for this machine: {exc}") from None
