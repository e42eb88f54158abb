"""How a weight is stored and walked: its pattern.

- dense: every element, in the kernel's own layout;
- a block shape R x C ("4x1", "1x16", ...): only the R consecutive input rows x C output
  columns blocks that hold a nonzero, each stored whole;
- bitmask: the nonzeros in order plus one bit per element, expanded into dense tiles as the
  kernel runs (x86-amx). It computes every product, as dense does, but streams fewer bytes.

A `Pattern` is a str ("dense", "4x1", "bitmask"), so it keys the cost tables, prints in the IR
and the model info, and compares with the kernel table's rows as before; what a pattern means
for counting, cost and storage is asked of it here instead of spelled out where it is used.
"""

from __future__ import annotations

import re

import numpy as np

_BLOCK = re.compile(r"([1-9][0-9]{0,3})x([1-9][0-9]{0,3})")


def block_nonzeros(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nonzeros in each R x C block of a K x N mask, zero padded at the K and N tails: a
    (K/R) x (N/C) array, the blocks counted as the kernels store them."""
    k, n = mask.shape
    kb, nb = -(-k // rows), -(-n // cols)
    padded = np.zeros((kb * rows, nb * cols), dtype=bool)
    padded[:k, :n] = mask
    return padded.reshape(kb, rows, nb, cols).sum(axis=(1, 3), dtype=np.int32)


class Pattern(str):
    __slots__ = ()

    def __new__(cls, text: str) -> Pattern:
        if isinstance(text, Pattern):
            return text
        text = str(text)
        if text not in ("dense", "bitmask") and not _BLOCK.fullmatch(text):
            raise ValueError(f"unknown weight pattern {text!r}: 'dense', 'bitmask' or a block "
                             "shape RxC such as '4x1'")
        return super().__new__(cls, text)

    @property
    def is_dense(self) -> bool:
        return self == "dense"

    @property
    def is_bitmask(self) -> bool:
        return self == "bitmask"

    @property
    def is_block(self) -> bool:
        """Only the blocks holding a nonzero are stored and multiplied."""
        return not (self.is_dense or self.is_bitmask)

    @property
    def computes_every_product(self) -> bool:
        """Dense, and bitmask, whose kernels expand dense tiles: every group and pair kept."""
        return not self.is_block

    @property
    def block(self) -> tuple[int, int]:
        """(R, C) of a block pattern."""
        match = _BLOCK.fullmatch(self)
        if match is None:
            raise ValueError(f"weight pattern {str(self)!r} has no block shape")
        return int(match.group(1)), int(match.group(2))

    def count(self, weight: np.ndarray) -> tuple[int, float]:
        """(units, fill) of a K x N weight: for a block pattern the blocks holding a nonzero
        (zero padded at the K and N tails) and the share of their elements that are nonzero;
        otherwise the nonzeros and the density."""
        nonzeros = int(np.count_nonzero(weight))
        if not self.is_block:
            return nonzeros, nonzeros / weight.size if weight.size else 1.0
        rows, cols = self.block
        blocks = int(np.count_nonzero(block_nonzeros(weight != 0, rows, cols)))
        return blocks, nonzeros / (blocks * rows * cols) if blocks else 1.0

    def work_units(self, elements: int, units: int) -> int:
        """What the kernel's cost is counted in, per activation row: its blocks for a block
        pattern, every element otherwise (bitmask computes every product)."""
        return units if self.is_block else elements

    def multiplied(self, elements: int, units: int) -> int:
        """Weights the kernel multiplies: the blocks' (their zero padding included) for a
        block pattern, every one otherwise (bitmask expands dense tiles)."""
        if not self.is_block:
            return elements
        rows, cols = self.block
        return units * rows * cols

    def streamed_bytes(self, elements: int, units: int, value_bytes: int) -> float:
        """Bytes of weights a pass reads: the values (whole blocks; for bitmask only the
        nonzeros, and one bit per element)."""
        if self.is_bitmask:
            return units * value_bytes + elements / 8
        return self.multiplied(elements, units) * value_bytes


DENSE_PATTERN = Pattern("dense")  # not ops.DENSE, the operator
BITMASK = Pattern("bitmask")
