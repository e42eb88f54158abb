"""The CNN operators' kernels at odd sizes (tests/cnn_models.py's fixed cases) run where the
in-process tests cannot look: under AddressSanitizer and UndefinedBehaviorSanitizer (one read
past a plane or a map, a negative index, an overflow fails the run) on two threads, and on
AArch64 under qemu-user, each compared with onnxruntime on this host."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sparsec.codegen import targets
from tests.cnn_ops_helpers import fixed_cases
from tests.conftest import HOST_TARGETS, run_onnxruntime
from tests.runs import Runs
from tests.runtime_c.test_sanitizers import SANITIZE

ARM = targets.TARGETS["arm-neon"]


def close_to(wanted: list[np.ndarray], atol: float, outputs: dict) -> None:
    for got, want in zip(outputs.values(), wanted, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def run_all(runs: Runs, compiler, target: str, **options) -> int:
    cases = fixed_cases()
    for label, model, feeds, atol in cases:
        result = compiler.compile(model, target, **options)
        runs.submit(result, feeds, functools.partial(close_to, run_onnxruntime(model, feeds),
                                                     atol), label=label)
    assert runs.flush() == len(cases)
    return len(cases)


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_cnn_kernels_run_clean_under_sanitizers(target, compiler):
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=2, driver_flags=SANITIZE)
    run_all(runs, compiler, target, extra_cflags=SANITIZE)


@pytest.mark.skipif(targets.execution_mode(ARM) not in ("native", "emulated"),
                    reason=f"arm-neon is {targets.execution_mode(ARM)} here: no cross "
                           "compiler or no qemu-aarch64 (.ci/run installs both)")
def test_cnn_kernels_on_arm(compiler):
    run_all(Runs(ARM, compiler.cache_dir), compiler, "arm-neon")
