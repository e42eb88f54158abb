"""samples/c_example builds with its Makefile and prints what onnxruntime computes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

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
