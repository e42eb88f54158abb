"""Reading a build cache entry back in a test: what restore_entry, the build's only reader,
would give."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sparsec.codegen import cache_files


def read_entry(entry: Path) -> bytes | None:
    """The file stored in `entry`, or None when it is missing or fails its digest."""
    with tempfile.TemporaryDirectory(prefix="sparsec-entry-") as tmp:
        restored = Path(tmp) / "restored"
        return restored.read_bytes() if cache_files.restore_entry(entry, restored) else None
