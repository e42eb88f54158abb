"""Shared fixtures: a private build cache, compile-and-run helpers, and the targets under test.

Each target runs natively where the host CPU can execute it, otherwise compile-only; the
pytest header and the test ids say which (e.g. `[x86-avx512:native]`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from sparsec.codegen import targets as target_table

# Kernels are chosen by the kernel table's costs in every test: a host profile that `sparsec
# calibrate` left in the developer's cache would change which patterns compile picks.
os.environ["SPARSEC_PROFILE_DIR"] = tempfile.mkdtemp(prefix="sparsec-test-profiles-")


def target_modes() -> list[tuple[str, str]]:
    return [(t.name, target_table.execution_mode(t)) for t in target_table.TARGETS.values()]


def pytest_report_header(config):
    modes = ", ".join(f"{name}: {mode}" for name, mode in target_modes())
    int8 = ("exact (VNNI): compared besides the exact reference" if ONNXRUNTIME_INT8_ON_VNNI
            else "inexact for weight codes past 64 (no VNNI): those int8 tests compare with "
                 "the exact reference only")
    return [f"sparsec targets on this host: {modes}", f"onnxruntime's int8 here: {int8}"]


# A target of another architecture without its cross compiler cannot even be compiled for: its
# cases are skipped with the reason (.ci/run installs the toolchain, so CI runs them).
TARGET_PARAMS = [pytest.param(name, id=f"{name}:{mode}", marks=pytest.mark.skipif(
    mode == "unavailable", reason=f"no cross compiler for {name} on this host"))
    for name, mode in target_modes()]


def host_target(name: str):
    """A target that runs in this process, as a parameter whose id says what it resolves to here
    and how it runs (`native=x86-avx2:native`, `x86-amx:emulated`); where it cannot run here
    (compile-only, or another architecture) it is skipped, saying so."""
    resolved = target_table.resolve(name)
    mode = target_table.execution_mode(resolved)
    shown = name if resolved.name == name else f"{name}={resolved.name}"
    runs_here = mode == "native" or target_table.runs_emulated(resolved)
    return pytest.param(name, id=f"{shown}:{mode}", marks=pytest.mark.skipif(
        not runs_here, reason=f"{name} is {mode} on this host: its code cannot run here"))


# The portable build and the best this CPU runs: what tests of whole libraries run on.
HOST_TARGETS = [host_target("generic"), host_target("native")]


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


# onnxruntime's u8 x s8 products (MatMulInteger, and the chains quantize_dynamic writes) run, on
# x86, on VPDPBUSD where the CPU has VNNI (AVX512_VNNI or AVX-VNNI): four products summed into
# int32, exact. Without VNNI (AVX2-only hosts such as Zen 2, AVX-512 before Cascade Lake) MLAS
# multiplies with VPMADDUBSW, which sums two adjacent u8 x s8 products into an int16 with
# saturation: exact only while 2 * 255 * max|weight code| <= 32767, codes in [-64, 64] (what
# quantize_dynamic's reduce_range writes). Other architectures widen before summing: exact.
# sparsec's int8 is exact everywhere, so every int8 test checks it against the exact reference
# (tests/quantization.py) and against onnxruntime's int8 as well where that is exact too.
ONNXRUNTIME_INT8_ON_VNNI = (target_table.host_arch() != "x86_64"
                            or bool({"avx512vnni", "avxvnni"} & target_table.host_features()))


def onnxruntime_int8_exact(max_weight_code: int = 127) -> bool:
    """Whether onnxruntime's int8 products are exact on this host for weight codes up to
    `max_weight_code` in magnitude (against u8 activation codes up to 255)."""
    return ONNXRUNTIME_INT8_ON_VNNI or 2 * 255 * max_weight_code <= 32767


def int8_oracles(max_weight_code: int = 127):
    """The `with_onnxruntime` parameter of an int8 test whose weight codes reach
    `max_weight_code`: True where onnxruntime's int8 is compared besides the exact reference;
    the test id says which oracles, and why onnxruntime is left out where it is."""
    if onnxruntime_int8_exact(max_weight_code):
        return pytest.param(True, id="vs-reference+onnxruntime")
    return pytest.param(False, id="vs-reference:onnxruntime-int8-inexact-without-vnni")


def int8_expected(model: onnx.ModelProto, feeds: dict,
                  with_onnxruntime: bool) -> dict[str, list[np.ndarray]]:
    """What an int8 model's outputs must equal, bit for bit, by oracle: the exact reference
    always, onnxruntime too where `with_onnxruntime` (from int8_oracles)."""
    from tests.quantization import run_exact

    expected = {"the exact int8 reference": run_exact(model, feeds)}
    if with_onnxruntime:
        expected["onnxruntime"] = run_onnxruntime(model, feeds)
    return expected


def assert_int8_equal(actual: list[np.ndarray], expected: dict[str, list[np.ndarray]]) -> None:
    for oracle, outputs in expected.items():
        for got, wanted in zip(actual, outputs, strict=True):
            differ = got != wanted
            assert not differ.any(), (
                f"{int(differ.sum())} of {differ.size} outputs differ from {oracle}, max "
                f"{np.max(np.abs(got - wanted))}")


def int8_outputs_equal(expected: dict[str, list[np.ndarray]], outputs: dict) -> None:
    """assert_int8_equal for a run's outputs by name (a tests/runs.py check)."""
    assert_int8_equal(list(outputs.values()), expected)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
