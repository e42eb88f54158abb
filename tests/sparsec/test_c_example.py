"""samples/c_example builds with its Makefile and prints what onnxruntime computes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_onnxruntime

EXAMPLE = Path(__file__).resolve().parents[2] / "samples" / "c_example"


def test_c_example_matches_onnxruntime(tmp_path, cache_dir):
    import onnx

    build = tmp_path / "build"
    sparsec_cmd = f"{sys.executable} -m sparsec"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir))
    assert shutil.which("make"), "GNU make is needed to build the C example"
    subprocess.run(["make", "-C", str(EXAMPLE), f"BUILD={build}", f"SPARSEC={sparsec_cmd}",
                    "TARGET=generic"], check=True, capture_output=True, env=env)
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    x.tofile(tmp_path / "input.bin")
    result = subprocess.run([str(build / "example"), str(tmp_path / "input.bin")],
                            check=True, capture_output=True, text=True)
    got = np.array([float(v) for v in result.stdout.split()], np.float32).reshape(4, 10)
    (expected,) = run_onnxruntime(onnx.load(str(EXAMPLE.parent / "mlp_sparse.onnx")), {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_c_example_cross_builds_for_arm_and_runs_under_qemu(tmp_path, cache_dir):
    """The ARM deployment bundle: library, sparsec.h, model header and the example, built on
    this host with the cross compiler; run under qemu-user (or natively on an ARM host)."""
    import onnx

    from sparsec.codegen import targets

    arm = targets.TARGETS["arm-neon"]
    mode = targets.execution_mode(arm)
    if mode not in ("native", "emulated"):
        pytest.skip(f"arm-neon is {mode} here (.ci/run installs the cross toolchain and qemu)")
    build = tmp_path / "build"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir))
    compiler = targets.cross_compiler(arm) if mode == "emulated" else "cc"
    subprocess.run(["make", "-C", str(EXAMPLE), f"BUILD={build}",
                    f"SPARSEC={sys.executable} -m sparsec", "TARGET=arm-neon", f"CC={compiler}"],
                   check=True, capture_output=True, env=env)
    for shipped in ("mlp_sparse.so", "mlp_sparse.h", "sparsec.h", "example"):
        assert (build / shipped).is_file()
    x = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    x.tofile(tmp_path / "input.bin")
    prefix = ([targets.emulator(arm), "-L", str(targets.sysroot(arm))]
              if mode == "emulated" else [])
    result = subprocess.run(prefix + [str(build / "example"), str(tmp_path / "input.bin")],
                            check=True, capture_output=True, text=True)
    got = np.array([float(v) for v in result.stdout.split()], np.float32).reshape(4, 10)
    (expected,) = run_onnxruntime(onnx.load(str(EXAMPLE.parent / "mlp_sparse.onnx")), {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


TWO_MODELS = r"""
#include <stdio.h>
#include "libwide.h"
#include "libnarrow.h"

/* Both models in one program: each library's API under its own name. */
int main(void) {
  static float x[WIDE_MODEL_INPUT0_ELEMENTS], y[WIDE_MODEL_OUTPUT0_ELEMENTS];
  static float u[NARROW_MODEL_INPUT0_ELEMENTS], v[NARROW_MODEL_OUTPUT0_ELEMENTS];
  for (int i = 0; i < WIDE_MODEL_INPUT0_ELEMENTS; i++) x[i] = (float)(i % 7) - 3.0f;
  for (int i = 0; i < NARROW_MODEL_INPUT0_ELEMENTS; i++) u[i] = (float)(i % 5) - 2.0f;
  sparsec_context *a, *b;
  if (wide_create_threads(&a, 1) || narrow_create_threads(&b, 1)) return 1;
  const void *in_a[] = {x}, *in_b[] = {u};
  void *out_a[] = {y}, *out_b[] = {v};
  if (wide_run(a, in_a, out_a) || narrow_run(b, in_b, out_b)) return 2;
  for (int i = 0; i < WIDE_MODEL_OUTPUT0_ELEMENTS; i++) printf("%.9g\n", y[i]);
  printf("--\n");
  for (int i = 0; i < NARROW_MODEL_OUTPUT0_ELEMENTS; i++) printf("%.9g\n", v[i]);
  wide_destroy(a);
  narrow_destroy(b);
  return 0;
}
"""


def global_symbols(path: Path, dynamic: bool) -> list[str]:
    """The symbols `path` defines for others to link against."""
    listing = subprocess.run(["nm", "--defined-only", "--extern-only",
                              *(["-D"] if dynamic else []), str(path)],
                             check=True, capture_output=True, text=True).stdout
    return [line.split()[-1] for line in listing.splitlines() if len(line.split()) == 3]


@pytest.mark.parametrize("emit", ["shared", "static"])
def test_two_models_named_apart_link_into_one_program(emit, tmp_path, cache_dir):
    """--name gives each library its own exported API (and each header its own macros), so
    two models link into one program, as shared libraries or static archives (whose kernels,
    weights and runtime are local symbols); each computes its own model, as sparsec.load of
    the shared build does."""
    import sparsec
    from sparsec.codegen import build
    from tests.graphs import mlp

    models = {"wide": mlp(k=48, n=32, m=3, density=0.4, seed=1),
              "narrow": mlp(k=16, n=8, m=5, density=0.6, seed=2)}
    suffix = ".a" if emit == "static" else ".so"
    for name, model in models.items():
        sparsec.compile_model(model, "generic", tmp_path / f"lib{name}{suffix}", name=name,
                              emit=emit, cache_dir=cache_dir)
        if emit == "static":  # the shared twin, for sparsec.load below
            sparsec.compile_model(model, "generic", tmp_path / "shared" / f"lib{name}.so",
                                  name=name, cache_dir=cache_dir)
        symbols = global_symbols(tmp_path / f"lib{name}{suffix}", emit == "shared")
        assert symbols and all(symbol.startswith(f"{name}_") for symbol in symbols), symbols
    (tmp_path / "main.c").write_text(TWO_MODELS)
    link = (["libwide.a", "libnarrow.a", "-lm", "-pthread"] if emit == "static" else
            ["-L.", "-lwide", "-lnarrow", "-Wl,-rpath,$ORIGIN"])
    subprocess.run([build.find_compiler(None), "-std=c11", "-Wall", "-Werror", "main.c",
                    "-o", "both", *link], cwd=tmp_path, check=True, capture_output=True)
    shared = tmp_path / ("shared" if emit == "static" else ".")
    printed = subprocess.run([str(tmp_path / "both")], check=True, capture_output=True,
                             text=True).stdout.split("--")
    x = ((np.arange(3 * 48) % 7) - 3.0).astype(np.float32).reshape(3, 48)
    u = ((np.arange(5 * 16) % 5) - 2.0).astype(np.float32).reshape(5, 16)
    for (name, feed), text in zip((("wide", x), ("narrow", u)), printed):
        got = np.array(text.split(), np.float32)
        expected = sparsec.load(shared / f"lib{name}.so").run({"x": feed})["y"].ravel()
        np.testing.assert_array_equal(got, expected)
