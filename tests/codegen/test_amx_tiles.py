"""codegen/packing.amx_tiles: the tables the AMX kernel walks. Simulated in numpy exactly as
the kernel reads them (per panel, per tile: the A tile of codes times the B rows named by the
tile), they must give the integer product of any activations with the codes; a 4x16 weight
keeps only the groups with a nonzero in the panel, and tiles whose groups are consecutive are
marked so the kernel loads them without copying; BITMASK's masks and nonzeros expand back into
the dense tiles. Also: the real-hardware build of both AMX
rows compiles with -Werror, holds the tile instructions, and (on a CPU without AMX) refuses to
load with the missing features named."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.codegen import packing, targets
from sparsec.codegen.kernels import KERNELS
from sparsec.compiler.patterns import BITMASK
from tests.graphs import model


def simulate(codes: np.ndarray, x_codes: np.ndarray, keep_all: bool) -> np.ndarray:
    """Y^T (N x tokens, int64) as the kernel computes it from the tables, for one token tile
    (AMX_TOKENS: the kernel splits it over C tiles of 16, which the einsum need not)."""
    k, n = codes.shape
    tile_ptr, starts, rows, tiles = packing.amx_tiles(codes, keep_all)
    groups = packing.amx_groups(k)
    # the B operands: [groups][tokens][4] codes, zero past K
    b = np.zeros((groups * 4, packing.AMX_TOKENS), np.int64)
    b[:k] = x_codes
    b_rows = b.reshape(groups, 4, packing.AMX_TOKENS).transpose(0, 2, 1).reshape(groups, -1)
    row_bytes = 4 * packing.AMX_TOKENS
    out = np.zeros((len(tile_ptr) - 1) * 16 * packing.AMX_TOKENS, np.int64).reshape(
        -1, packing.AMX_TOKENS)
    for panel in range(len(tile_ptr) - 1):
        for t in range(tile_ptr[panel], tile_ptr[panel + 1]):
            group_rows = rows[t] // row_bytes
            if starts[t] >= 0:  # the kernel loads 16 consecutive rows from starts[t]
                assert starts[t] == rows[t][0] and np.all(np.diff(group_rows) == 1)
            a = tiles[t].view(np.int8).astype(np.int64).reshape(16, 16, 4)  # channel, group, 4
            bt = b_rows[group_rows].reshape(16, packing.AMX_TOKENS, 4)  # group, token, 4
            out[panel * 16:(panel + 1) * 16] += np.einsum("cgj,gtj->ct", a, bt)
    return out[:n]


@st.composite
def weights(draw):
    k, n = draw(st.integers(1, 300)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    block = draw(st.sampled_from([(4, 16), (4, 1), (1, 1), (64, 16)]))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    keep = rng.random((-(-k // block[0]), -(-n // block[1]))) < density
    keep = np.repeat(np.repeat(keep, block[0], 0), block[1], 1)[:k, :n]
    codes = (rng.integers(-128, 128, (k, n)) * keep).astype(np.int8)
    return codes, rng.integers(0, 256, (k, packing.AMX_TOKENS))


@settings(max_examples=80, deadline=None)
@given(case=weights(), keep_all=st.booleans())
def test_tables_compute_the_product(case, keep_all):
    codes, x_codes = case
    expected = codes.astype(np.int64).T @ x_codes
    np.testing.assert_array_equal(simulate(codes, x_codes, keep_all), expected)


def test_sparse_panels_keep_only_groups_with_a_nonzero():
    rng = np.random.default_rng(0)
    k, n = 256, 32  # 64 groups, 2 panels
    keep = rng.random((64, 2)) < 0.25
    codes = (np.repeat(np.repeat(keep, 4, 0), 16, 1) * rng.integers(1, 100, (k, n))).astype(np.int8)
    tile_ptr, starts, rows, _ = packing.amx_tiles(codes, keep_all=False)
    for panel in range(2):
        kept = int(keep[:, panel].sum())
        assert tile_ptr[panel + 1] - tile_ptr[panel] == -(-kept // 16)
    dense_ptr, dense_starts, _, _ = packing.amx_tiles(codes, keep_all=True)
    assert list(dense_ptr) == [0, 4, 8] and np.all(dense_starts >= 0)


def test_consecutive_groups_load_without_copying():
    codes = np.zeros((256, 16), np.int8)
    codes[64:128] = 1  # groups 16..31: one full consecutive tile
    codes[200] = 1  # group 50: a tile of one kept group, padded
    tile_ptr, starts, rows, _ = packing.amx_tiles(codes, keep_all=False)
    assert list(tile_ptr) == [0, 2]
    assert starts[0] == 16 * 4 * packing.AMX_TOKENS and starts[1] == -1
    assert list(rows[1] // (4 * packing.AMX_TOKENS)) == [50] * 16  # padding repeats a kept group


def expand(masks: np.ndarray, offsets: np.ndarray, nonzeros: np.ndarray, tiles: int,
           value_bytes: int) -> np.ndarray:
    """The A tiles as the BITMASK kernel rebuilds them: per 64-byte row, a masked expand-load
    from its tile's offset, advancing by the mask's population count."""
    lanes = 64 // value_bytes
    bits = np.unpackbits(masks.reshape(tiles, 16, lanes // 8), axis=2, bitorder="little")
    out = np.zeros((tiles, 16, lanes, value_bytes), np.uint8)
    values = nonzeros.reshape(-1, value_bytes) if nonzeros.size else nonzeros.reshape(0, 1)
    for t in range(tiles):
        at = offsets[t] // value_bytes
        for r in range(16):
            present = np.flatnonzero(bits[t, r])
            out[t, r, present] = values[at:at + len(present)]
            at += len(present)
        assert t + 1 == tiles or at == offsets[t + 1] // value_bytes
    return out.reshape(tiles, 1024)


@settings(max_examples=60, deadline=None)
@given(case=weights(), bf16=st.booleans())
def test_bitmask_tiles_expand_back_to_the_dense_tiles(case, bf16):
    codes, _ = case
    values = codes.astype(np.uint16) * 0x3F81 if bf16 else codes  # bf16 bits, zero stays zero
    group = 2 if bf16 else 4
    _, starts, _, tiles = packing.amx_tiles(values, keep_all=True, group=group)
    assert np.all(starts >= 0)  # every group kept: B is read in place
    masks, offsets, nonzeros = packing.bitmask_tiles(tiles, values.dtype.itemsize)
    assert nonzeros.size == np.count_nonzero(values) * values.dtype.itemsize
    assert masks.size == len(tiles) * 1024 // values.dtype.itemsize // 8
    np.testing.assert_array_equal(expand(masks, offsets, nonzeros, len(tiles),
                                         values.dtype.itemsize), tiles)


AMX_ROWS = [k for k in KERNELS if k.isa == "amx"]


@pytest.mark.skipif(targets.host_arch() != "x86_64", reason="AMX is x86-64 only")
@pytest.mark.parametrize("row", AMX_ROWS, ids=lambda r: f"{r.symbol}:compile-only")
def test_real_build_compiles_with_werror_and_uses_tiles(row, compiler):
    """The library for real AMX hardware (no emulation), warnings as errors."""
    from onnx import helper

    rng = np.random.default_rng(1)
    keep = np.repeat(rng.random((20, 3)) < 0.3, 4, 0)[:, np.repeat(np.arange(3), 16)]
    w = (rng.standard_normal((80, 48)) * keep).astype(np.float32)
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [20, 80])],
              [("y", [20, 48])], [("w", w)])
    bf16 = row.weight_dtype == "bfloat16"
    result = compiler.compile(m, "x86-amx", emulate=False, quantize="bf16" if bf16 else "dynamic",
                              force_pattern=row.pattern, extra_cflags=("-Werror",))
    assert result.info["layers"][0]["kernel"] == row.symbol
    assert "emulated" not in result.info and "amx_tile" in result.info["features"]
    if not targets.can_execute(targets.TARGETS["x86-amx"]):  # the CPU guard, for real
        import sparsec
        from sparsec.errors import LoadError

        with pytest.raises(LoadError, match=r"lacks: .*amx_tile amx_int8 amx_bf16( avx512vbmi2)? "
                           r"\(AMX needs the CPU.*Linux 5.16 or later\); rebuild it"):
            sparsec.load(result.library)
    objdump = shutil.which("objdump")
    if not objdump:  # binutils comes with gcc; say so rather than pass quietly
        pytest.skip("objdump not found (apt-get install binutils): the build compiled, its "
                    "instructions are unchecked")
    text = subprocess.run([objdump, "-d", str(result.library)], capture_output=True,
                          text=True, check=True).stdout
    product = "tdpbf16ps" if bf16 else "tdpbsud"
    expected = ["ldtilecfg", "tileloadd", product, "tilestored", "tilerelease"]
    if row.pattern == BITMASK:
        expected.append("vpexpandw" if bf16 else "vpexpandb")
    for instruction in expected:
        assert instruction in text, f"{instruction} missing from the real build"
