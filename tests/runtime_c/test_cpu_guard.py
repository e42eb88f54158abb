"""The CPU guard on a CPU that really lacks AVX-512: Python, numpy and sparsec run under
`qemu-x86_64 -cpu Haswell` (AVX2 and FMA, no AVX-512), which executes the library's own CPU
check against the CPUID that qemu reports. An x86-avx512 library must refuse to load with
the missing features named and the fix; an x86-avx2 library of the same model must load and
give the host's results. (tests/sparsec/test_module.py covers the same refusal through a build that
hides feature bits; this one needs no test hook in the library.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sparsec.codegen import targets
from tests.graphs import mlp

QEMU = shutil.which("qemu-x86_64")

pytestmark = pytest.mark.skipif(
    targets.host_arch() != "x86_64" or QEMU is None,
    reason="needs an x86-64 host with qemu-x86_64 (apt-get install qemu-user; .ci/run does)")

UNDER_HASWELL = r"""
import json, sys
import numpy as np
import sparsec
from sparsec.errors import LoadError

avx512, avx2, x = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
try:
    sparsec.load(avx512)
    refusal = None
except LoadError as exc:
    refusal = str(exc)
y = sparsec.load(avx2, threads=1).run({"x": x})["y"]
print(json.dumps({"refusal": refusal, "y": y.tolist()}))
"""


def test_avx512_library_refuses_a_haswell_cpu_and_avx2_runs(compiler, tmp_path):
    model = mlp(k=32, n=48, m=4, density=0.2)
    avx512 = compiler.compile(model, "x86-avx512").library
    avx2 = compiler.compile(model, "x86-avx2").library
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", UNDER_HASWELL,
                           str(avx512), str(avx2), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["refusal"] is not None, "the AVX-512 library loaded on a CPU without AVX-512"
    assert "lacks: avx512f" in result["refusal"]
    assert "rebuild it with --target native" in result["refusal"]
    if compiler.can_run("x86-avx2"):  # the emulated run computes what this CPU computes
        import sparsec

        expected = sparsec.load(avx2, threads=1).run({"x": x})["y"]
        np.testing.assert_array_equal(np.asarray(result["y"], np.float32), expected)
