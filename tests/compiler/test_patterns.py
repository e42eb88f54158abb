"""compiler/patterns.py: what each weight pattern counts, multiplies and streams, checked against
counts made here by brute force over the blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.compiler.options import CompileOptions
from sparsec.compiler.patterns import BITMASK, DENSE_PATTERN, Pattern
from sparsec.errors import SparsecError


def brute_force_blocks(weight: np.ndarray, rows: int, cols: int) -> int:
    k, n = weight.shape
    return sum(bool(np.any(weight[i:i + rows, j:j + cols]))
               for i in range(0, k, rows) for j in range(0, n, cols))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 23), st.integers(1, 37),
       st.sampled_from(["1x1", "4x1", "1x16", "4x4", "2x3"]), st.floats(0.0, 1.0),
       st.integers(0, 2**31 - 1))
def test_block_pattern_counts_blocks_and_fill(k, n, name, density, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, n)).astype(np.float32) * (rng.random((k, n)) < density)
    pattern = Pattern(name)
    rows, cols = pattern.block
    blocks = brute_force_blocks(weight, rows, cols)
    units, fill = pattern.count(weight)
    assert units == blocks
    assert fill == (np.count_nonzero(weight) / (blocks * rows * cols) if blocks else 1.0)
    assert pattern.work_units(k * n, units) == blocks
    assert pattern.multiplied(k * n, units) == blocks * rows * cols
    assert pattern.streamed_bytes(k * n, units, 2) == blocks * rows * cols * 2


def test_dense_and_bitmask_multiply_every_weight_and_stream_differently():
    weight = np.zeros((16, 64), np.float32)
    weight[3, 5:9] = 1.0
    for pattern in (DENSE_PATTERN, BITMASK):
        assert pattern.count(weight) == (4, 4 / 1024)
        assert pattern.work_units(1024, 4) == pattern.multiplied(1024, 4) == 1024
        assert pattern.computes_every_product and not pattern.is_block
    assert DENSE_PATTERN.streamed_bytes(1024, 4, 4) == 4096
    assert BITMASK.streamed_bytes(1024, 4, 4) == 4 * 4 + 1024 / 8  # nonzeros, a bit each


def test_patterns_are_the_strings_they_print_as():
    assert Pattern("4x1") == "4x1" and {"4x1": 1}[Pattern("4x1")] == 1
    assert Pattern(Pattern("1x16")).block == (1, 16) and str(BITMASK) == "bitmask"
    assert Pattern("16x1").is_block and not Pattern("16x1").computes_every_product


@pytest.mark.parametrize("text", ["4y1", "0x4", "x4", "dense ", "4x1x2", "", "12345x1"])
def test_unknown_patterns_are_refused(text):
    with pytest.raises(ValueError, match="unknown weight pattern"):
        Pattern(text)
    with pytest.raises(SparsecError, match="unknown weight pattern"):
        CompileOptions(force_pattern=text)
    with pytest.raises(ValueError, match="no block shape"):
        _ = DENSE_PATTERN.block
