"""sparsec__expf, sparsec__erff and sparsec__gelu (runtime_c/sparsec_vmath_body.h), behind Softmax,
attention, Erf and Gelu, against float64, built with and (where the host has FMA) without
fused multiply-add; and Softmax through a compiled model against a float64 reference."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from onnx import helper

import sparsec
from sparsec.codegen import build, targets
from tests.conftest import TARGET_PARAMS
from tests.graphs import model

HARNESS = r"""
#include "sparsec_model.h"
#include <stdio.h>
#include <string.h>
int main(void) {
  float x;
  while (fread(&x, sizeof x, 1, stdin) == 1) {
    const float y = FUNCTION(x);
    fwrite(&y, sizeof y, 1, stdout);
  }
  return 0;
}
"""


def harness(folder, function: str, flags: tuple[str, ...] = ()):
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    subprocess.run([build.find_compiler(), "-O2", "-std=c11", *flags, f"-DFUNCTION={function}",
                    "-I", str(build.runtime_dir()), str(folder / "harness.c"), "-o", str(exe)],
                   check=True)

    def run(x: np.ndarray) -> np.ndarray:
        out = subprocess.run([str(exe)], input=x.astype(np.float32).tobytes(),
                             capture_output=True, check=True).stdout
        return np.frombuffer(out, dtype=np.float32)

    return run


def _fma_flags() -> list:
    """Without FMA everywhere; with -mfma (SPARSEC_FMADD as one rounding) where it runs."""
    avx2 = targets.TARGETS.get("x86-avx2")
    runs_fma = avx2 is not None and targets.execution_mode(avx2) == "native"
    return [pytest.param((), id="plain"),
            pytest.param(("-mfma",), id="fma", marks=pytest.mark.skipif(
                not runs_fma, reason="this host cannot run FMA code"))]


@pytest.fixture(scope="module", params=_fma_flags())
def expf(tmp_path_factory, request):
    return harness(tmp_path_factory.mktemp("expf"), "sparsec__expf", request.param)


@pytest.fixture(scope="module", params=_fma_flags())
def erff(tmp_path_factory, request):
    return harness(tmp_path_factory.mktemp("erff"), "sparsec__erff", request.param)


@pytest.fixture(scope="module", params=_fma_flags())
def gelu(tmp_path_factory, request):
    return harness(tmp_path_factory.mktemp("gelu"), "sparsec__gelu", request.param)


def ulps(actual: np.ndarray, exact: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def test_expf_within_two_ulp(expf):
    x = np.concatenate([np.linspace(-87.0, 88.7, 200_001, dtype=np.float32),
                        np.random.default_rng(0).uniform(-20, 0, 100_000).astype(np.float32)])
    error = ulps(expf(x), np.exp(x.astype(np.float64)))
    assert error.max() <= 2.0, f"{error.max():.2f} ulp at x = {x[np.argmax(error)]!r}"


def test_expf_flushes_what_would_be_subnormal_to_zero(expf):
    """Below -87 (e^-87 = 1.4 FLT_MIN) e^x is 0: every subnormal result costs Intel cores a
    microcode assist; the error is under FLT_MIN * 1.4, far below any tolerance downstream."""
    x = np.linspace(-87.33654, -87.0001, 1_001, dtype=np.float32)
    assert np.all(expf(x) == 0)


def test_expf_edges(expf):
    x = np.array([-np.inf, -3.4e38, -104.0, -87.4, 0.0, 89.0, np.inf, np.nan], np.float32)
    y = expf(x)
    assert list(y[:4]) == [0.0, 0.0, 0.0, 0.0]
    assert y[4] == 1.0 and np.isinf(y[5]) and np.isinf(y[6]) and np.isnan(y[7])


def test_erff_within_four_ulp(erff):
    x = np.concatenate([np.linspace(-6, 6, 200_001, dtype=np.float32),
                        np.geomspace(1e-30, 0.5, 10_000).astype(np.float32)])
    exact = np.array([math.erf(float(v)) for v in x])
    error = ulps(erff(x), exact)
    assert error.max() <= 4.0, f"{error.max():.2f} ulp at x = {x[np.argmax(error)]!r}"


def test_erff_edges(erff):
    y = erff(np.array([-np.inf, -10.0, 0.0, -0.0, 10.0, np.inf, np.nan], np.float32))
    assert list(y[:6]) == [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0] and np.isnan(y[6])




def test_gelu_within_eight_ulp_or_the_graphs_own_precision(gelu):
    """Within 8 ulp of GELU (erfc's fit is 1.2e-7 relative, e^x 2 ulp, a few roundings), or
    for the negative tail within |x| * 2^-24: what the exported graph itself can resolve there,
    as it rounds 1 + erf(z) to float (onnxruntime returns 0 below x ~ -5.5)."""
    x = np.concatenate([np.linspace(-13, 13, 200_001, dtype=np.float32),
                        np.random.default_rng(1).standard_normal(100_000).astype(np.float32)])
    wide = x.astype(np.float64)
    exact = 0.5 * wide * np.array([math.erfc(-v / math.sqrt(2)) for v in wide])
    error = np.abs(gelu(x).astype(np.float64) - exact)
    allowed = 8 * np.spacing(np.abs(exact).astype(np.float32)) + np.abs(wide) * 2.0**-24
    worst = np.argmax(error / allowed)
    assert error[worst] <= allowed[worst], f"error {error[worst]:.3g} at x = {x[worst]!r}"


def test_gelu_edges(gelu):
    y = gelu(np.array([-np.inf, -200.0, -0.0, 0.0, 200.0, np.inf, np.nan], np.float32))
    assert np.isnan(y[0]) and abs(y[1]) < 1e-30 and y[2] == 0 and y[3] == 0
    assert y[4] == 200.0 and y[5] == np.inf and np.isnan(y[6])


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_softmax_with_masked_scores(target, compiler):
    """Attention rows: scores plus a -FLT_MAX mask on some positions."""
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((4, 128))).astype(np.float32)
    x[:, 100:] += np.finfo(np.float32).min
    onnx_model = model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                       [("x", [4, 128])], [("y", [4, 128])])
    result = compiler.compile(onnx_model, target)
    if not compiler.can_run(target):
        return
    y = sparsec.load(result.library).run({"x": x})["y"]
    exact = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    exact /= exact.sum(axis=1, keepdims=True)
    # 2 ulp for each exponential, 128 in-order additions (at most 128 eps relative), one
    # division: bound (3 + 128) eps relative
    eps = float(np.finfo(np.float32).eps)
    assert np.all(np.abs(y - exact) <= (3 + 128) * eps * exact + 1e-45)
    assert np.all(y[:, 100:] == 0)
