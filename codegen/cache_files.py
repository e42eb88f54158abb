"""Files that land whole, and build cache entries that carry their own digest.

Every file lands by atomic rename, so concurrent builds of one model are safe, and every cache
entry holds the SHA-256 of its contents beside them, so a truncated or corrupted entry (a full
disk, a crash mid-copy, bit rot) is noticed on the next hit and rebuilt instead of loaded. A
file a process has checked once can be linked into later builds of that process instead
(`keep_verified`, `place_verified`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

from sparsec.errors import BuildError, user_stacklevel


@contextlib.contextmanager
def _atomic_file(path: Path, mode: int):
    """A file to write that appears at `path` whole when the block ends, never partly."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BuildError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the whole new one, never a partial write."""
    with _atomic_file(path, mode) as handle:
        handle.write(data)


def atomic_copy(source: Path, path: Path, mode: int = 0o644) -> None:
    """`atomic_write` of a file's contents, streamed: a library holds the model's weights."""
    with _atomic_file(path, mode) as handle, open(source, "rb") as data:
        shutil.copyfileobj(data, handle, CHUNK)


def place(source: Path, path: Path) -> None:
    """`source`'s contents at the new name `path`: a hard link where the file system allows,
    else a streamed copy (weights.bin can be gigabytes)."""
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


CACHE_MAGIC = b"sparsec-cache 1 sha256 "
CHUNK = 1 << 20


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest().encode()


def store_entry(entry: Path, source: Path) -> None:
    """One file holding the digest and the file `source` (a library, an object), so no reader
    can pair one with the other's older twin: concurrent writers each replace the whole
    entry. Streamed, never read whole into memory."""
    digest = _file_digest(source)
    with _atomic_file(entry, 0o644) as handle, open(source, "rb") as data:
        handle.write(CACHE_MAGIC + digest + b"\n")
        shutil.copyfileobj(data, handle, CHUNK)


class _Corrupt(Exception):
    pass


def restore_entry(entry: Path, destination: Path, mode: int = 0o644) -> bool:
    """Copy the file stored in `entry` to `destination` (atomically, streamed, its digest
    checked on the way); False when the entry is missing or fails its digest."""
    try:
        handle = open(entry, "rb")
    except OSError:
        return False
    try:
        with handle:
            head = handle.readline(len(CACHE_MAGIC) + 65)
            if not head.startswith(CACHE_MAGIC) or not head.endswith(b"\n"):
                raise _Corrupt
            h = hashlib.sha256()
            with _atomic_file(destination, mode) as out:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
                if h.hexdigest().encode() != head[len(CACHE_MAGIC):-1]:
                    raise _Corrupt
        with contextlib.suppress(OSError):  # its last use, which the size bound keeps
            os.utime(entry)
        return True
    except _Corrupt:
        _warn_corrupt(entry)
        return False


def _warn_corrupt(entry: Path) -> None:
    warnings.warn(f"sparsec: build cache entry {entry} is corrupt (its digest does not match); "
                  f"rebuilding it", RuntimeWarning, stacklevel=user_stacklevel())



# Files this process has built or restored (digest checked), by entry, kept in a private folder:
# x86's precompiled header is 26 MB, and reading, hashing and writing it took 25 ms of each
# compile of a small model. Later builds in the process link to the copy instead; they only
# read it.
_VERIFIED: dict[Path, Path] = {}


@functools.cache
def _verified_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sparsec-checked-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def keep_verified(entry: Path, checked: Path) -> None:
    """Keep `checked`, a file built or restored for `entry`, for `place_verified`: a new
    name, then a rename, as a copy kept earlier may be open in a concurrent build."""
    kept = _verified_folder() / entry.name.removesuffix(".entry")
    with contextlib.suppress(OSError):
        fresh = kept.with_name(f"{kept.name}.{os.getpid()}.{threading.get_ident()}")
        place(checked, fresh)
        os.replace(fresh, kept)
        _VERIFIED[entry] = kept


def place_verified(entry: Path, destination: Path) -> bool:
    """`entry`'s file at `destination` from this process's checked copy; False without one."""
    kept = _VERIFIED.get(entry)
    if kept is None:
        return False
    try:
        place(kept, destination)
    except OSError:
        del _VERIFIED[entry]
        return False
    return True
