"""runtime_c/sparsec_amx.h's emulation of the AMX tile instructions, tested before anything is
built on it: the four int8 tile products (TDPBUSD, TDPBSUD, TDPBSSD, TDPBUUD) and TDPBF16PS
against numpy references written from the instructions' definitions (hypothesis shapes and
values: int32 wrap-around, bf16 denormals, infinities and NaN), tile loads and stores touching
exactly the configured shape, and every misuse the hardware faults on (bad LDTILECFG, tiles
used unconfigured or after release, mismatched or repeated operands) aborting with the rule
named. The same probe also compiles against the real intrinsics with -Werror. Everything here
runs emulated: no AMX hardware is involved."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import cffi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.codegen import build, targets

HERE = Path(__file__).resolve().parent
PROBE = HERE / "amx_probe.c"
X86 = targets.host_arch() == "x86_64"


def _compile(tmp: Path, name: str, *flags: str) -> Path:
    out = tmp / name
    subprocess.run([build.find_compiler(targets.resolve("generic")), "-O1", "-std=c11", "-Wall",
                    "-Wextra", "-Werror", "-I", str(build.runtime_dir()), *flags, str(PROBE),
                    "-o", str(out)], check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("amx")
    library = _compile(tmp, "probe.so", "-DSPARSEC_AMX_EMULATE", "-fPIC", "-shared")
    ffi = cffi.FFI()
    ffi.cdef("void amx_probe_dot(int op, int rows, int colsb_c, int colsb_a, "
             "const uint8_t *a, const uint8_t *b, uint8_t *c);")
    return ffi, ffi.dlopen(str(library))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("amx"), "probe", "-DSPARSEC_AMX_EMULATE",
                    "-DAMX_PROBE_MAIN")


INT8_OPS = {"TDPBUSD": (0, False, True), "TDPBSUD": (1, True, False),
            "TDPBSSD": (2, True, True), "TDPBUUD": (3, False, False)}  # op, A signed, B signed
BF16 = 4


def tile_dot(probe, op: int, rows: int, n: int, k: int, a: np.ndarray, b: np.ndarray,
             c: np.ndarray) -> np.ndarray:
    """The emulation's C after one dot product; operands as 16 x 64-byte arrays."""
    ffi, lib = probe
    out = np.ascontiguousarray(c.copy())
    lib.amx_probe_dot(op, rows, 4 * n, 4 * k, ffi.from_buffer(np.ascontiguousarray(a)),
                      ffi.from_buffer(np.ascontiguousarray(b)), ffi.from_buffer(out))
    return out


def untouched(out: np.ndarray, rows: int, colsb: int) -> None:
    """The store writes rows x colsb bytes and nothing else (the rest keeps 0xa5)."""
    mask = np.ones((16, 64), bool)
    mask[:rows, :colsb] = False
    assert np.all(out[mask] == 0xA5)


shapes = st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 16))


@pytest.mark.parametrize("instruction", sorted(INT8_OPS))
@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), extreme=st.booleans())
def test_int8_tile_products_match_the_definition(probe, instruction, shape, seed, extreme):
    rows, n, k = shape
    op, a_signed, b_signed = INT8_OPS[instruction]
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    c = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    if extreme:  # accumulators at the edge of int32 and the largest products, so sums wrap
        c.view(np.int32)[:] = np.int32(2**31 - 1)
        a[:] = 0x80 if a_signed else 0xFF
        b[:] = 0x80 if b_signed else 0xFF
    out = tile_dot(probe, op, rows, n, k, a, b, c)
    a_values = (a.view(np.int8) if a_signed else a)[:rows, :4 * k].astype(np.int64)
    b_values = (b.view(np.int8) if b_signed else b)[:k, :4 * n].astype(np.int64)
    sums = (np.einsum("mkj,knj->mn", a_values.reshape(rows, k, 4), b_values.reshape(k, n, 4))
            + c[:rows, :4 * n].view(np.int32))
    wrapped = ((sums + 2**31) % 2**32 - 2**31).astype(np.int32)
    np.testing.assert_array_equal(out[:rows, :4 * n].view(np.int32), wrapped)
    untouched(out, rows, 4 * n)


def bf16_values(rng, shape) -> np.ndarray:
    """bf16 bit patterns: mostly ordinary numbers, with zeros, denormals, infinities and NaN."""
    normal = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16)
    # zeros, denormals, infinities, NaN, the largest and smallest normals, and +-2**-64 and
    # 2**-63, whose products (2**-128, 2**-127) are denormal floats: flushed to zero
    special = rng.choice(np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x0040, 0x7F80, 0xFF80,
                                   0x7FC0, 0x7F7F, 0x0080, 0x1F80, 0x9F80, 0x2000],
                                  np.uint32), shape)
    return np.where(rng.random(shape) < 0.2, special, normal).astype(np.uint16)


def flush(x: np.ndarray) -> np.ndarray:
    """Denormal float32 values to zero of the same sign."""
    bits = x.astype(np.float32).view(np.uint32)
    return np.where(bits & 0x7F800000 == 0, bits & 0x80000000, bits).view(np.float32)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), tiny=st.booleans())
def test_tdpbf16ps_matches_the_definition(probe, shape, seed, tiny):
    rows, n, k = shape
    rng = np.random.default_rng(seed)
    a = bf16_values(rng, (16, 32)).view(np.uint8)
    b = bf16_values(rng, (16, 32)).view(np.uint8)
    if tiny:  # every value +-2**-64 or 2**-63 and C zero: the sums stay denormal
        a = rng.choice(np.array([0x1F80, 0x9F80, 0x2000], np.uint16), (16, 32)).view(np.uint8)
        b = rng.choice(np.array([0x1F80, 0x9F80, 0x2000], np.uint16), (16, 32)).view(np.uint8)
    c = np.zeros((16, 16), np.float32) if tiny else rng.standard_normal((16, 16)) * 8
    c = flush(c.astype(np.float32)).view(np.uint8)
    out = tile_dot(probe, BF16, rows, n, k, a, b, c)
    to_float = lambda bits: flush((bits.astype(np.uint32) << 16).view(np.float32))  # noqa: E731
    av = to_float(a[:rows, :4 * k].view(np.uint16).reshape(rows, k, 2))
    bv = to_float(b[:k, :4 * n].view(np.uint16).reshape(k, n, 2))
    acc = c[:rows, :4 * n].view(np.float32).copy()
    with np.errstate(all="ignore"):
        for kk in range(k):
            for j in (1, 0):  # the odd pair element first, as the instruction's definition
                acc = flush(acc + flush(av[:, kk, j][:, None] * bv[kk, :, j][None, :]))
    got = out[:rows, :4 * n].view(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(acc))
    np.testing.assert_array_equal(got[~np.isnan(got)].view(np.uint32),
                                  acc[~np.isnan(acc)].view(np.uint32))
    untouched(out, rows, 4 * n)


FAULTS = {
    "palette-2": ("LDTILECFG", "#GP", "palette must be 0 or 1"),
    "reserved-byte": ("LDTILECFG", "#GP", "reserved"),
    "rows-17": ("LDTILECFG", "#GP", "at most 16 rows"),
    "colsb-65": ("LDTILECFG", "#GP", "at most 64 bytes"),
    "rows-without-colsb": ("LDTILECFG", "#GP", "both zero or both not"),
    "tile-8-configured": ("LDTILECFG", "#GP", "8 tiles"),
    "load-before-config": ("TILELOADD", "#UD", "no tile configuration"),
    "unconfigured-tile": ("TILEZERO", "#UD", "not configured"),
    "after-release": ("TILEZERO", "#UD", "no tile configuration"),
    "same-tile-twice": ("TDPBUSD", "#UD", "distinct"),
    "m-mismatch": ("TDPBUSD", "#UD", "as many rows as C"),
    "n-mismatch": ("TDPBUSD", "#UD", "bytes per row as C"),
    "k-mismatch": ("TDPBF16PS", "#UD", "one row per dword"),
    "partial-dword": ("TDPBUSD", "#UD", "whole dwords"),
}


@pytest.mark.parametrize("scenario", sorted(FAULTS))
def test_misuse_faults_as_the_hardware_does(program, scenario):
    done = subprocess.run([str(program), scenario], capture_output=True, text=True, timeout=60)
    instruction, fault, rule = FAULTS[scenario]
    assert done.returncode == -signal.SIGABRT, (done.returncode, done.stdout, done.stderr)
    assert f"{instruction} raises {fault}" in done.stderr and rule in done.stderr, done.stderr


def test_valid_use_does_not_fault(program):
    done = subprocess.run([str(program), "valid"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not X86, reason="AMX intrinsics exist on x86-64 only")
def test_the_probe_compiles_against_the_real_intrinsics(tmp_path):
    """Compile-only: the same source with the compiler's AMX intrinsics, -Werror."""
    _compile(tmp_path, "probe.o", "-mamx-tile", "-mamx-int8", "-mamx-bf16", "-c")
