"""The vector math (runtime_c/sparsec_vmath_body.h): every function at every vector width this
host can run (AVX2 and AVX-512 natively, NEON under qemu-aarch64) returns exactly the bits of
its scalar instance, over the whole float range (hypothesis draws any bit pattern: NaNs,
infinities, subnormals, both tails); and the scalar instances of tanh, sigmoid and GELU's tanh
form are within stated ulp bounds of float64 references (erf, e^x and GELU are checked in
tests/runtime_c/test_softmax.py). Widths the host cannot run are compiled with -Werror and
skipped with the reason."""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import chebyshev

from sparsec.codegen import build, targets

FUNCTIONS = ("exp", "erf", "gelu", "gelu_tanh", "sigmoid", "tanh", "exp_shifted")

# One program per width: reads floats, writes each function's results on whole vectors
# (LANES) and through the scalar instance, function after function.
HARNESS = r"""
#include "sparsec_model.h"
#include <stdio.h>
#include <stdlib.h>
#define APPLY(name) \
  for (size_t i = 0; i < n; i += LANES) \
    VSTORE(out + i, VNAME(name)(VLOAD(in + i))); \
  fwrite(out, sizeof *out, n, stdout); \
  for (size_t i = 0; i < n; i++) \
    out[i] = sparsec_v1_##name(in[i]); \
  fwrite(out, sizeof *out, n, stdout);
#define PASTE(l, name) sparsec_v##l##_##name
#define EXPAND(l, name) PASTE(l, name)
#define VNAME(name) EXPAND(LANES, name)
#define VLOAD EXPAND(LANES, load)
#define VSTORE EXPAND(LANES, store)
int main(void) {
  static float in[1 << 20], out[1 << 20];
  const size_t n = fread(in, sizeof *in, 1 << 20, stdin);
  if (n % LANES) return 2;
  APPLY(exp) APPLY(erf) APPLY(gelu) APPLY(gelu_tanh) APPLY(sigmoid) APPLY(tanh)
  APPLY(exp_shifted)
  return 0;
}
"""

WIDTHS = {  # lanes: (target whose CPU runs them, compiler flags)
    8: ("x86-avx2", ("-mavx2", "-mfma")),
    16: ("x86-avx512", ("-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw",
                        "-mavx512vl")),
    4: ("arm-neon", ("-march=armv8-a",)),
}


class Harness:
    def __init__(self, folder, lanes: int):
        target = targets.TARGETS[WIDTHS[lanes][0]]
        self.mode = targets.execution_mode(target)
        if self.mode == "unavailable":
            pytest.skip(f"{lanes} lanes ({target.name}): no cross compiler here")
        cross = target.arch != targets.host_arch()
        compiler = targets.cross_compiler(target) if cross else build.find_compiler()
        (folder / "harness.c").write_text(HARNESS)
        self.exe = folder / "harness"
        subprocess.run([compiler, "-O2", "-std=c11", "-Werror", "-Wall", "-Wextra",
                        *WIDTHS[lanes][1], f"-DLANES={lanes}", "-I", str(build.runtime_dir()),
                        str(folder / "harness.c"), "-o", str(self.exe)], check=True)
        self.prefix = [targets.emulator(target), "-L", str(targets.sysroot(target))] \
            if cross and self.mode == "emulated" else []
        self.lanes = lanes

    def run(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{function: (vector results, scalar results)}."""
        pad = -len(x) % self.lanes
        x = np.concatenate([x.astype(np.float32), np.zeros(pad, np.float32)])
        out = subprocess.run([*self.prefix, str(self.exe)], input=x.tobytes(),
                             capture_output=True, check=True).stdout
        y = np.frombuffer(out, dtype=np.float32).reshape(len(FUNCTIONS), 2, len(x))
        return {f: (y[i, 0], y[i, 1]) for i, f in enumerate(FUNCTIONS)}


@pytest.fixture(scope="module", params=sorted(WIDTHS), ids=lambda lanes: f"{lanes}-lanes")
def harness(request, tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp(f"vmath{request.param}"), request.param)
    if h.mode == "compile-only":
        pytest.skip(f"{request.param} lanes: compiled with -Werror; this CPU cannot run them")
    return h


def same_bits(vector: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    """Equal bits, or both NaN (a NaN's sign and payload are not part of the contract)."""
    return (vector.view(np.uint32) == scalar.view(np.uint32)) | (np.isnan(vector)
                                                                & np.isnan(scalar))


def edge_values() -> np.ndarray:
    info = np.finfo(np.float32)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, info.max, -info.max, info.tiny, -info.tiny,
               info.smallest_subnormal, -info.smallest_subnormal, 0.5, 0.625, -0.625, 88.0,
               88.72283, 88.8, 89.0, -87.0, -87.33654, -88.0, -104.0, 9.3, -9.3, 13.0, -13.0]
    ramps = [np.linspace(-120, 120, 48_001), np.geomspace(1e-38, 1e38, 4_000),
             -np.geomspace(1e-38, 1e38, 4_000)]
    return np.concatenate([np.array(special), *ramps]).astype(np.float32)


def assert_lanes_match_the_scalar(harness, x: np.ndarray) -> None:
    for name, (vector, scalar) in harness.run(x).items():
        same = same_bits(vector[:len(x)], scalar[:len(x)])
        assert same.all(), f"{name}: lane differs at x = {x[~same][:5]!r}"


def test_every_lane_returns_the_scalar_result_at_the_edges(harness):
    assert_lanes_match_the_scalar(harness, edge_values())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=256))
def test_every_lane_returns_the_scalar_result_for_any_bits(harness, bits):
    assert_lanes_match_the_scalar(harness, np.array(bits, dtype=np.uint32).view(np.float32))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=256))
def test_softmax_exp_equals_exp_where_softmax_calls_it(harness, bits):
    """exp_shifted serves softmax's x - max(x): zero or below, -inf, or NaN (a NaN row, or
    inf - inf). There it is exp bit for bit, on every lane."""
    x = np.concatenate([-np.abs(np.array(bits, dtype=np.uint32).view(np.float32)),
                        edge_values()])
    x = x[(x <= 0) | np.isnan(x)]
    results = harness.run(x)
    exact = results["exp"][1][:len(x)]
    for got in results["exp_shifted"]:
        same = same_bits(got[:len(x)], exact)
        assert same.all(), f"exp_shifted differs from exp at x = {x[~same][:5]!r}"


# --- the scalar instance against float64 --------------------------------------------------

@pytest.fixture(scope="module")
def scalar(tmp_path_factory):
    """The scalar instance, as a portable build computes it (-mfma where the host runs it, as
    every SIMD target has: the bounds hold with and without, test_softmax checks both ways)."""
    native = targets.execution_mode(targets.TARGETS["x86-avx2"]) == "native"
    folder = tmp_path_factory.mktemp("vmath-scalar")
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    subprocess.run([build.find_compiler(), "-O2", "-std=c11", "-Werror", "-Wall", "-Wextra",
                    *(("-mfma",) if native else ()), "-DLANES=1", "-I", str(build.runtime_dir()),
                    str(folder / "harness.c"), "-o", str(exe)], check=True)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        out = subprocess.run([str(exe)], input=x.astype(np.float32).tobytes(),
                             capture_output=True, check=True).stdout
        y = np.frombuffer(out, dtype=np.float32).reshape(len(FUNCTIONS), 2, len(x))
        return {f: y[i, 1] for i, f in enumerate(FUNCTIONS)}

    return run


def ulps(actual: np.ndarray, exact: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def wide_inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([np.linspace(-20, 20, 400_001), rng.standard_normal(100_000) * 4,
                           np.geomspace(1e-30, 20, 20_000), -np.geomspace(1e-30, 20, 20_000)]
                          ).astype(np.float32)


def test_tanh_within_four_ulp(scalar):
    """Cephes' polynomial (1.3e-7 relative) below 0.625; above, 1 - 2/(e^2x + 1) with e^x
    within 2 ulp, whose error the quotient scales by at most e^2x/(e^2x + 1)^2 * 2 < 1/2."""
    x = wide_inputs()
    exact = np.tanh(x.astype(np.float64))
    error = ulps(scalar(x)["tanh"], exact)
    assert error.max() <= 4.0, f"{error.max():.2f} ulp at x = {x[np.argmax(error)]!r}"


def test_sigmoid_within_four_ulp(scalar):
    """1 / (1 + e^-x): e^x's 2 ulp, scaled by e/(1 + e) <= 1, and two roundings; results
    below e^-87 (where e^-x is flushed) are 0, as float64 rounds them to under 1e-37."""
    x = wide_inputs()
    wide = x.astype(np.float64)
    exact = 1 / (1 + np.exp(-wide))
    y = scalar(x)["sigmoid"]
    normal = x > -87
    error = ulps(y[normal], exact[normal])
    assert error.max() <= 4.0, f"{error.max():.2f} ulp at x = {x[normal][np.argmax(error)]!r}"
    assert np.all(y[~normal] <= 1.7e-38)


def test_gelu_tanh_within_eight_ulp_or_the_arguments_rounding(scalar):
    """x / (1 + e^(-2u)): e^x's 2 ulp and four roundings; and in the negative tail, where
    the result falls like e^(2u), the float rounding of u itself (|u| * 2^-22 relative, the
    same the exported graph suffers) scaled by 2|u|."""
    x = wide_inputs()
    wide = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (wide + 0.044715 * wide**3)
    exact = wide / (1 + np.exp(-2 * u))  # x/2 (1 + tanh u), without float64's cancellation
    error = np.abs(scalar(x)["gelu_tanh"].astype(np.float64) - exact)
    allowed = (8 + 2 * np.abs(u) * 4) * np.spacing(np.abs(exact).astype(np.float32)) + 1e-37
    worst = np.argmax(error / allowed)
    assert error[worst] <= allowed[worst], f"error {error[worst]:.3g} at x = {x[worst]!r}"


def test_edges(scalar):
    x = np.array([-np.inf, -100.0, -0.0, 0.0, 100.0, np.inf, np.nan], np.float32)
    y = scalar(x)
    assert list(y["tanh"][:6]) == [-1, -1, 0, 0, 1, 1] and np.isnan(y["tanh"][6])
    assert np.signbit(y["tanh"][2]) and not np.signbit(y["tanh"][3])
    assert list(y["sigmoid"][:6]) == [0, 0, 0.5, 0.5, 1, 1] and np.isnan(y["sigmoid"][6])
    g = y["gelu_tanh"]
    assert np.isnan(g[0]) and g[1] == 0 and g[2] == 0 and g[4] == 100 and g[5] == np.inf
    assert np.isnan(g[6])


def test_gelu_erfc_pieces_are_chebyshev_interpolants_of_erfc():
    """The table behind GELU (sparsec__erfc_pieces): piece i of [0, 4) in halves is erfc's
    degree-6 Chebyshev interpolant in u = a - (i/2 + 1/4), rounded to float. Recomputed here,
    so the constants say where they come from. In float each piece is within 2^-24 of erfc
    (the interpolants are within 1.8e-8; the rest is the coefficients' own rounding)."""
    source = (build.runtime_dir() / "sparsec_vmath_body.h").read_text()
    body = source[source.index("sparsec__erfc_pieces[7][8] = {"):]
    rows = re.findall(r"\{([^{}]*)\}", body[:body.index("};")])
    table = np.array([[float(v.strip().rstrip("f")) for v in row.split(",") if v.strip()]
                      for row in rows])
    assert table.shape == (7, 8)
    erfc = np.vectorize(math.erfc)
    u = np.linspace(-0.25, 0.25, 1001)
    for piece in range(8):
        centre = piece / 2 + 0.25
        cheb = chebyshev.chebinterpolate(lambda s, c=centre: erfc(c + s / 4), 6)
        expected = chebyshev.cheb2poly(cheb) * 4.0 ** np.arange(7)  # s = 4u
        np.testing.assert_array_equal(table[:, piece].astype(np.float32),
                                      expected.astype(np.float32))
        fitted = np.polynomial.polynomial.polyval(u, table[:, piece].astype(np.float32))
        assert np.abs(fitted - erfc(centre + u)).max() < 2.0**-24
