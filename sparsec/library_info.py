"""A built library's model info, read without loading it.

The info JSON lives in the library's own ELF section, `.sparsec_info`, so it reads the same
for a library the host cannot load: another architecture's (a cross-built arm-neon library on
an x86 host), or one whose CPU features the host lacks. pyelftools reads the section headers
(a well-kept pure-Python ELF reader, rather than parsing them by hand here). A library built
before the section existed is asked through its info function instead, which needs no CPU
feature but must be loadable.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sparsec.errors import SparsecError

INFO_SECTION = ".sparsec_info"


AR_MAGIC = b"!<arch>\n"


def read_info(path: Path) -> dict:
    if not path.is_file():
        raise SparsecError(f"no compiled model at {path}")
    try:
        with path.open("rb") as file:
            if file.read(len(AR_MAGIC)) == AR_MAGIC:  # a static archive (--emit static)
                data = _archive_section(file)
            else:
                file.seek(0)
                section = ELFFile(file).get_section_by_name(INFO_SECTION)
                data = section.data() if section is not None else None
    except (ELFError, OSError, ValueError) as exc:
        raise SparsecError(f"{path} is not a sparsec library: {exc}") from None
    if data is None and path.suffix == ".a":
        raise SparsecError(f"{path} is a static archive without sparsec's model info")
    if data is None:
        return _info_by_loading(path)
    try:
        return json.loads(data.rstrip(b"\0").decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparsecError(f"{path}: its {INFO_SECTION} section is not model info: {exc}") \
            from None


def _archive_section(file) -> bytes | None:
    """The info section of the object in an ar archive that has one: each member is a
    60-byte header (its size in bytes 48-58) and its data, padded to an even length."""
    while header := file.read(60):
        if len(header) < 60:
            break
        size = int(header[48:58].decode().strip())
        member = io.BytesIO(file.read(size))
        file.read(size % 2)
        if member.getvalue()[:4] == b"\x7fELF":
            section = ELFFile(member).get_section_by_name(INFO_SECTION)
            if section is not None:
                return section.data()
    return None


def _info_by_loading(path: Path) -> dict:
    from sparsec.module import _ffi

    try:
        lib = _ffi().dlopen(str(path.resolve()))
        return json.loads(_ffi().string(lib.sparsec_model_info()).decode())
    except (OSError, AttributeError) as exc:
        raise SparsecError(f"{path} is not a sparsec library for this machine: {exc}") from None
