"""Kernel tests: every Dense row of the kernel table against a float64 numpy reference.

Each row (the dense kernel, and one block-sparse kernel per pattern) gets one-node graphs: a
MatMul with a constant weight pruned in the row's block shape, maybe a bias Add and an
activation, which fuse into one Dense node. The row's pattern is forced (`force_pattern`, as the
benchmarks do) and the test checks that the row is the kernel selected. It compiles for the
oldest target offering the row's ISA, and runs there when the host can: natively, under
qemu-user (another architecture), or not at all (compile-only: an AVX-512 row on an AVX2-only
host); the test ids say which.

hypothesis draws M, K, N (tails included), the block density and fill, the bias and the
activation; named edge cases are pinned with @example.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

from sparsec.codegen import targets
from sparsec.codegen.kernels import KERNELS, KernelSpec
from sparsec.codegen.spmm_params import rows_fit_l1_sets
from sparsec.compiler.ops import DENSE
from sparsec.compiler.patterns import Pattern
from tests.graphs import model
from tests.runs import Runs

# Rows for constant weights; the run-time-B row is covered by the Gemm conformance cases,
# whose B is a graph input.
# int8 rows have their own test (test_int8_kernels.py): exact, against an integer reference.
ROWS = [k for k in KERNELS
        if k.op == DENSE and k.pattern != "runtime" and k.weight_dtype == "float32"]
EPS = float(np.finfo(np.float32).eps)

# Error allowed against the exact (float64) result, in float32 eps, one line of why each:
SUM_PER_SQRT_K = 2.0  # K fp32 roundings walk like sqrt(K) eps of sum|a*w|; 2 is headroom
BIAS_RELATIVE = 1.0  # adding the bias rounds once, relative to |product| + |bias|
ACTIVATION = {  # op: (absolute error in eps, Lipschitz constant carrying the input's error)
    "": (0.0, 1.0),
    "Relu": (0.0, 1.0),  # a compare and a select: exact
    "Clip": (0.0, 1.0),  # exact
    "Sigmoid": (2.0, 0.25),  # 1 / (1 + expf(-x)): expf within 1 ulp, then two roundings
    "Tanh": (2.0, 1.0),  # glibc tanhf is within 1-2 ulp; |outputs| <= 1
}
CLIP = (-0.5, 0.75)


@dataclass(frozen=True)
class KernelCase:
    name: str
    m: int
    k: int
    n: int
    density: float  # probability that a block of the row's shape is kept
    fill: float = 1.0  # probability that an element of a kept block is nonzero
    empty_block_rows: tuple[int, ...] = ()  # block rows (R input rows each) zeroed; -1: last
    bias: bool = True
    activation: str = ""
    seed: int = 0


def block_of(row: KernelSpec) -> tuple[int, int]:
    return (1, 1) if row.pattern == "dense" else Pattern(row.pattern).block


def weight_for(case: KernelCase, block: tuple[int, int], rng) -> np.ndarray:
    """K x N, kept in whole R x C blocks (partial ones at the K and N tails)."""
    rows, cols = block
    kb, nb = -(-case.k // rows), -(-case.n // cols)
    keep = rng.random((kb, nb)) < case.density
    keep[[r % kb for r in case.empty_block_rows]] = False
    mask = np.repeat(np.repeat(keep, rows, 0), cols, 1)[:case.k, :case.n]
    mask &= rng.random((case.k, case.n)) < case.fill
    values = rng.uniform(0.5, 1.5, (case.k, case.n)) * rng.choice([-1.0, 1.0], (case.k, case.n))
    return (values * mask / np.sqrt(case.k)).astype(np.float32)


def one_node_model(case: KernelCase, weight: np.ndarray, bias: np.ndarray):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"])]
    inits = [("w", weight)]
    last = "p"
    if case.bias:
        nodes.append(helper.make_node("Add", ["p", "b"], ["a"]))
        inits.append(("b", bias))
        last = "a"
    if case.activation:
        extra = ["lo", "hi"] if case.activation == "Clip" else []
        inits += list(zip(extra, (np.float32(b) for b in CLIP)))
        nodes.append(helper.make_node(case.activation, [last, *extra], ["y"]))
        last = "y"
    return model(nodes, [("x", [case.m, case.k])], [(last, [case.m, case.n])], inits)


def reference(case: KernelCase, x, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """The exact result in float64, and the error an fp32 kernel may make (see the table)."""
    x, w, b = (a.astype(np.float64) for a in (x, weight, bias))
    value = x @ w
    error = SUM_PER_SQRT_K * EPS * np.sqrt(case.k) * (np.abs(x) @ np.abs(w))
    if case.bias:
        error += BIAS_RELATIVE * EPS * (np.abs(value) + np.abs(b))
        value = value + b
    absolute, lipschitz = ACTIVATION[case.activation]
    value = {"": lambda v: v, "Relu": lambda v: np.maximum(v, 0.0),
             "Sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "Tanh": np.tanh,
             "Clip": lambda v: np.clip(v, *CLIP)}[case.activation](value)
    return value, lipschitz * error + absolute * EPS


def oldest_target_with(isa: str) -> targets.Target:
    return next(t for t in targets.TARGETS.values() if isa in t.isas)


SIZES = st.one_of(st.sampled_from([1, 3, 4, 5, 16, 17, 33]), st.integers(1, 70))


@st.composite
def kernel_cases(draw) -> KernelCase:
    return KernelCase(
        "drawn", draw(SIZES), draw(SIZES), draw(SIZES),
        density=draw(st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0))),
        fill=draw(st.sampled_from([1.0, 1.0, 0.5])),
        empty_block_rows=tuple(draw(st.lists(st.integers(-2, 3), max_size=2))),
        bias=draw(st.booleans()), activation=draw(st.sampled_from(sorted(ACTIVATION))),
        seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.symbol}:"
                         f"{targets.execution_mode(oldest_target_with(row.isa))}")
def test_dense_row_matches_numpy(row: KernelSpec, compiler):
    """Natively each case runs as drawn; for another architecture's rows the cases run in one
    batch under qemu after hypothesis has drawn them all (no shrinking there)."""
    target = oldest_target_with(row.isa)
    runs = Runs(target, compiler.cache_dir)

    @settings(max_examples=8, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=kernel_cases())
    @example(case=KernelCase("k_eq_1", m=5, k=1, n=17, density=1.0))
    @example(case=KernelCase("m_tail", m=7, k=32, n=32, density=0.5, activation="Relu"))
    @example(case=KernelCase("n_tail", m=4, k=16, n=33, density=0.5))
    @example(case=KernelCase("k_tail", m=4, k=33, n=16, density=0.5, activation="Tanh"))
    @example(case=KernelCase("empty_row", m=5, k=49, n=20, density=1.0,
                             empty_block_rows=(0, 2, -1)))
    @example(case=KernelCase("all_zero_weight", m=6, k=20, n=20, density=0.0,
                             activation="Sigmoid"))
    @example(case=KernelCase("fully_dense_blocks", m=9, k=35, n=35, density=1.0,
                             activation="Clip"))
    @example(case=KernelCase("full_token_tiles", m=130, k=37, n=35, density=0.3,
                             activation="Relu"))  # 64-token tiles with K and N tails
    @example(case=KernelCase("k_chunks_and_column_tasks", m=70, k=150, n=140, density=0.3,
                             fill=0.5))  # token kernels: 3 K chunks in L1, 2 column ranges
    # A drawn case: GCC 12 for aarch64 warned, under -Werror, that the NEON panel kernel's
    # last tile of 2 rows might read a row vector past them uninitialized.
    @example(case=KernelCase("short_last_row_tile", m=66, k=5, n=1, density=0.0, bias=False))
    def check(case: KernelCase):
        rng = np.random.default_rng(case.seed)
        weight = weight_for(case, block_of(row), rng)
        bias = rng.standard_normal(case.n).astype(np.float32)
        x = rng.standard_normal((case.m, case.k)).astype(np.float32)
        result = compiler.compile(one_node_model(case, weight, bias), target.name,
                                  force_pattern=row.pattern, extra_cflags=("-Werror",))
        (layer,) = result.info["layers"]
        assert layer["kernel"] == row.symbol, layer["reason"]
        runs.submit(result, {"x": x}, functools.partial(compare, case, x, weight, bias),
                    label=repr(case))

    check()
    runs.flush()


def compare(case: KernelCase, x, weight, bias, outputs: dict) -> None:
    (actual,) = outputs.values()
    expected, allowed = reference(case, x, weight, bias)
    excess = np.abs(actual - expected) - allowed
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert np.all(excess <= 0), (f"{case.name}: y{[int(i) for i in worst]} is "
                                 f"{float(actual[worst])!r}, expected {float(expected[worst])!r} "
                                 f"within {allowed[worst]:.3g}")


def test_token_tiles_read_a_in_place_only_where_a_chunk_fits_l1_sets():
    """A feature-major A is read in place unless a K chunk's rows crowd L1's sets beyond
    their ways: 128-token rows (512 bytes apart) land in 16 of 64 sets, 16 lines each."""
    assert not rows_fit_l1_sets(4 * 128, 128, 4 * 32)
    assert not rows_fit_l1_sets(4 * 384, 128, 4 * 64)  # 384 tokens, AVX-512 tiles
    assert rows_fit_l1_sets(4 * 784, 128, 4 * 32)  # a 28x28 plane: every set, 4 lines
    assert rows_fit_l1_sets(4 * 3136, 128, 4 * 32)  # 56x56: 32 sets, 8 lines
    assert rows_fit_l1_sets(4 * 12544, 32, 4 * 32)  # 112x112, 32 channels: 8 sets, 8 lines
    assert not rows_fit_l1_sets(4 * 12544, 64, 4 * 32)
