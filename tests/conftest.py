"""Shared fixtures: a private build cache, compile-and-run helpers, and the targets under test.

Each target runs natively where the host CPU can execute it, otherwise compile-only; the
pytest header and the test ids say which (e.g. `[x86-avx512:native]`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from sparsec.codegen import targets as target_table


def target_modes() -> list[tuple[str, str]]:
    return [(t.name, target_table.execution_mode(t)) for t in target_table.TARGETS.values()]


def pytest_report_header(config):
    modes = ", ".join(f"{name}: {mode}" for name, mode in target_modes())
    return [f"sparsec targets on this host: {modes}"]


# A target of another architecture without its cross compiler cannot even be compiled for: its
# cases are skipped with the reason (.ci/run installs the toolchain, so CI runs them).
TARGET_PARAMS = [pytest.param(name, id=f"{name}:{mode}", marks=pytest.mark.skipif(
    mode == "unavailable", reason=f"no cross compiler for {name} on this host"))
    for name, mode in target_modes()]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One build cache per test session (worker), never the user's ~/.cache."""
    return tmp_path_factory.mktemp("sparsec-cache")


class Compiler:
    """Compile models into a per-test folder with the session cache, verifying IR each pass."""

    def __init__(self, workdir: Path, cache_dir: Path):
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.count = 0

    def compile(self, model: onnx.ModelProto | str | os.PathLike, target: str = "generic",
                **options) -> sparsec.CompileResult:
        self.count += 1
        output = self.workdir / f"model{self.count}.so"
        options.setdefault("verify_each", True)
        # Every parallel kernel through the pool, however small: the tests' layers are tiny,
        # and the threaded code paths must run (production leaves small layers on one thread).
        options.setdefault("parallel_min_ns", 0)
        # A target this CPU runs only through its emulation header (x86-amx without AMX) is
        # built that way, and runs here like a native one; its test ids say "emulated".
        options.setdefault("emulate", target_table.runs_emulated(target_table.resolve(target)))
        return sparsec.compile_model(model, target, output, cache_dir=self.cache_dir, **options)

    def load(self, model, target: str = "generic", **options) -> sparsec.Module:
        return sparsec.load(self.compile(model, target, **options).library)

    def can_run(self, target: str) -> bool:
        """Whether the library runs in this process: natively, or through an emulation header
        (not qemu: another architecture's code runs through tests/runs.py)."""
        resolved = target_table.resolve(target)
        return (target_table.execution_mode(resolved) == "native"
                or target_table.runs_emulated(resolved))


@pytest.fixture
def compiler(tmp_path, cache_dir) -> Compiler:
    return Compiler(tmp_path, cache_dir)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
