"""Names for the weight blob's constants, made from their content.

Kernels once addressed a constant as `sparsec_weights + OFFSET`: a change to one layer's
weights moved every later offset, so every later layer's C changed with it. A name made from
the constant's SHA-256 lets a translation unit name its constants whatever else the blob holds
(codegen/units.py): model.c defines, in assembly, a pointer of that name to the constant.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # emit imports this module
    from sparsec.codegen.emit import WeightBlob

# Hex digits of the digest in a name: 96 bits. Two distinct constants of one model sharing
# them would define one label twice, which the assembler refuses: never a silent mix-up.
NAME_DIGITS = 24


def symbol_name(digest: bytes) -> str:
    return "sparsec_w_" + digest.hex()[:NAME_DIGITS]


class WeightSymbols:
    """Names of `blob`'s constants by offset, and a record of the names templates use."""

    def __init__(self, blob: WeightBlob) -> None:
        self._blob = blob
        self._names: dict[int, str] = {}
        self._named = 0  # how many of the blob's constants (in its insertion order) are named
        self._used: dict[str, None] = {}  # in first-use order, once each

    def _name_new_constants(self) -> None:
        # The newest constants are the last entries of the blob's insertion-ordered table:
        # walking back to the first unnamed one keeps naming linear in the constant count.
        offsets = self._blob._offsets
        fresh = list(itertools.islice(reversed(offsets.items()), len(offsets) - self._named))
        for digest, offset in reversed(fresh):
            # An empty constant shares its offset with the next one: either name is the
            # same address, and the first keeps it.
            self._names.setdefault(offset, symbol_name(digest))
        self._named = len(offsets)

    def name(self, offset: int) -> str:
        """The symbol of the constant `blob.add` placed at `offset`."""
        if offset not in self._names:
            self._name_new_constants()
        return self._names[offset]

    def use(self, offset: int) -> str:
        """`name`, recorded for `take`: the templates' `weight` filter."""
        name = self.name(offset)
        self._used[name] = None
        return name

    def take(self) -> list[str]:
        """The names used since the last take."""
        used, self._used = list(self._used), {}
        return used

    def definitions(self) -> list[tuple[str, int]]:
        """Every name's (name, offset), in the blob's order."""
        self._name_new_constants()
        return sorted(((name, offset) for offset, name in self._names.items()),
                      key=lambda item: item[1])
