"""samples/c_example builds with its Makefile and prints what onnxruntime computes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_onnxruntime

EXAMPLE = Path(__file__).resolve().parents[1] / "samples" / "c_example"


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
