"""The build cache as a whole: whole compiles keyed on their inputs, its size bound (least
recently used entries go first), and what `sparsec cache info|clear` reports and removes.

A whole compile is cached under the SHA-256 of everything that decides the library: the
model's bytes (and its external data files'), the options that shape the output, the target,
the host profile's costs, the C compiler's identity and sparsec's own sources (its Python,
templates and runtime, so an edited checkout is a new key, not a stale hit). A hit restores
the library and its header and skips the front end, the passes and C generation, which a
repeated BERT-base compile spent 16 of its 26 s in when only the C build was cached.

Entries are codegen/build.py's: one file holding a digest and the data, written atomically,
checked on the way out. That format, not an SQLite-indexed store such as diskcache, because
the C build's own entries (libraries, unit objects, the runtime, precompiled headers) are
already such files in the same folder, and one size bound must cover them all: it walks the
folder, and a restored entry's modification time is its last use.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import mmap
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sparsec.codegen import build as builder
from sparsec.codegen import cache_files
from sparsec.compiler import limits
from sparsec.compiler.options import CompileOptions
from sparsec.errors import SparsecError
from sparsec.version import __version__

DEFAULT_LIMIT = 4 << 30
"""Bytes the cache folder may hold ($SPARSEC_CACHE_SIZE, e.g. 2G, overrides it)."""

# Options that write files beside the library, or check the IR as it is made: a compile
# with any of them runs in full (a cached library would skip what they ask for).
_RUNS_IN_FULL = ("dump_ir", "keep_source", "verify_each")
# Options that change nothing in the library.
_IRRELEVANT = ("cache_dir", "use_cache")

KINDS = {  # folder (or None: the cache's top level) -> what its entries are
    "compiles": "whole compiles (header, info, which library)",
    None: "libraries by C source",
    "units": "translation unit objects",
    "runtime": "runtime objects",
    "prelude": "precompiled headers",
}


def limit_bytes() -> int:
    text = os.environ.get("SPARSEC_CACHE_SIZE")
    if not text:
        return DEFAULT_LIMIT
    try:
        return limits.parse_size(text)
    except SparsecError as exc:
        raise SparsecError(f"SPARSEC_CACHE_SIZE={text!r}: {exc}") from None


def cacheable(options: CompileOptions) -> bool:
    return options.use_cache and not any(getattr(options, name) for name in _RUNS_IN_FULL)


@functools.lru_cache(maxsize=1)
def _sources_digest() -> str:
    """sparsec's own code: every .py, .j2, .c and .h of the installed package."""
    import sparsec
    from sparsec import codegen, compiler, runtime_c, templates

    h = hashlib.sha256(__version__.encode())
    roots = [Path(package.__file__).parent
             for package in (sparsec, compiler, codegen, templates, runtime_c)]
    for root in dict.fromkeys(path.resolve() for path in roots):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".j2", ".c", ".h") and path.is_file():
                h.update(f"{path.relative_to(root)}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(cache_files.CHUNK), b""):
            h.update(chunk)


# How ONNX names an external data file: a StringStringEntryProto {key: "location", value: the
# file}, field 1 (tag 0x0a, 8 bytes) then field 2 (tag 0x12, a varint length, the name).
_LOCATION = re.compile(rb"\x0a\x08location\x12")


def _external_locations(data) -> list[str]:
    """The file names a serialized model's tensors point at, found in its bytes without
    parsing it (parsing BERT-base's 435 MB took 0.5 s and as much memory again). A chance
    match only adds a file that then counts in the key."""
    found = set()
    for match in _LOCATION.finditer(data):
        length, shift, position = 0, 0, match.end()
        while position < len(data) and shift < 35:
            byte = data[position]
            length |= (byte & 0x7F) << shift
            position, shift = position + 1, shift + 7
            if not byte & 0x80:
                break
        name = bytes(data[position:position + length])
        if 0 < length < 4096 and b"\0" not in name:
            found.add(name.decode("utf-8", "replace"))
    return sorted(found)


def _model_digest(model) -> str:
    """The model's bytes, and those of every external data file it names."""
    import onnx

    h = hashlib.sha256()
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString(deterministic=True)
        h.update(data)
        locations = _external_locations(data)
        directory = Path.cwd()
    else:
        path = Path(model)
        if not path.is_file():  # a FIFO would block the open; the front end says what it is
            return ""
        try:
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                        access=mmap.ACCESS_READ) as data:
                h.update(data)
                locations = _external_locations(data)
        except (OSError, ValueError):  # unreadable or empty: the compile itself says why
            return ""
        directory = path.parent
    for location in locations:
        h.update(f"\0{location}\0".encode())
        # Model files are untrusted: only a regular file inside the model's folder is read
        # (a location of /dev/zero would never end); the front end refuses the others.
        try:
            resolved = (directory / location).resolve()
            if resolved.is_relative_to(directory.resolve()) and resolved.is_file():
                _hash_file(h, resolved)
            else:
                h.update(b"not read")
        except (OSError, ValueError):
            h.update(b"missing")
    return h.hexdigest()


def compile_key(model, target: str, options: CompileOptions, compiler: str,
                measured: Mapping) -> str | None:
    """The key of this compile, or None when it cannot be cached."""
    if not cacheable(options):
        return None
    model_digest = _model_digest(model)
    if not model_digest:
        return None
    shaping = {field.name: repr(getattr(options, field.name))
               for field in dataclasses.fields(options) if field.name not in _IRRELEVANT}
    h = hashlib.sha256()
    for part in (model_digest, target, json.dumps(shaping, sort_keys=True),
                 json.dumps(sorted((list(k), v) for k, v in measured.items())),
                 builder.compiler_identity(compiler), _sources_digest()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / "compiles" / f"{key}.entry"


def restore(cache_dir: Path, key: str, library: Path, header: Path) -> dict | None:
    """The cached library and header at `library` and `header`, and the model info; None on
    a miss. A whole compile's entry names the library's own entry (the C build's, by source)
    and holds the header and the info, so the library is stored once (and a static archive,
    which is no ELF file to read the info from, needs nothing else)."""
    entry = _entry(cache_dir, key)
    if not entry.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="sparsec-cache-") as tmp:
        record = Path(tmp) / "record.json"
        if not cache_files.restore_entry(entry, record):
            return None
        try:
            fields = json.loads(record.read_text())
            library_key, header_text, info = fields["library"], fields["header"], fields["info"]
        except (ValueError, KeyError, TypeError):
            return None
    if not cache_files.restore_entry(cache_dir / f"{library_key}.entry", library, 0o755):
        return None
    cache_files.atomic_write(header, header_text.encode())
    return info


def store(cache_dir: Path, key: str, library_key: str, header: Path, info: dict) -> None:
    entry = _entry(cache_dir, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsec-cache-") as tmp:
        record = Path(tmp) / "record.json"
        record.write_text(json.dumps({"library": library_key, "header": header.read_text(),
                                      "info": info}))
        cache_files.store_entry(entry, record)


def _all_entries(cache_dir: Path) -> list[tuple[str | None, Path, os.stat_result]]:
    found = []
    for kind in KINDS:
        folder = cache_dir / kind if kind else cache_dir
        try:
            with os.scandir(folder) as listing:
                for item in listing:
                    if item.name.endswith(".entry") and item.is_file(follow_symlinks=False):
                        found.append((kind, Path(item.path), item.stat(follow_symlinks=False)))
        except OSError:
            continue
    return found


def prune(cache_dir: Path, limit: int | None = None) -> int:
    """Remove the least recently used entries until the cache holds at most `limit` bytes;
    returns the bytes removed."""
    limit = limit_bytes() if limit is None else limit
    entries = _all_entries(cache_dir)
    total = sum(stat.st_size for _, _, stat in entries)
    removed = 0
    for _, path, stat in sorted(entries, key=lambda entry: entry[2].st_mtime):
        if total - removed <= limit:
            break
        try:
            path.unlink()
            removed += stat.st_size
        except OSError:  # another process took it first
            pass
    return removed


def usage(cache_dir: Path) -> dict:
    """Entries and bytes by kind, for `sparsec cache info`."""
    kinds = {KINDS[kind]: {"entries": 0, "bytes": 0} for kind in KINDS}
    for kind, _, stat in _all_entries(cache_dir):
        kinds[KINDS[kind]]["entries"] += 1
        kinds[KINDS[kind]]["bytes"] += stat.st_size
    return {"folder": str(cache_dir), "limit_bytes": limit_bytes(),
            "bytes": sum(k["bytes"] for k in kinds.values()), "kinds": kinds}


def clear(cache_dir: Path) -> int:
    """Remove every entry; returns how many."""
    count = 0
    for _, path, _ in _all_entries(cache_dir):
        try:
            path.unlink()
            count += 1
        except OSError:
            pass
    return count
