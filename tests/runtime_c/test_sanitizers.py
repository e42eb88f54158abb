"""Generated code under AddressSanitizer and UndefinedBehaviorSanitizer.

Libraries are compiled with -fsanitize=address,undefined -fno-sanitize-recover=all
(TOOLCHAIN.md's recipe) for the portable target and the host's best, and run through
runtime_c/driver.c built with the same sanitizers (a sanitized library cannot be loaded into
this unsanitized Python): any out-of-bounds access, use after free, leak (LeakSanitizer checks
after every job) or undefined operation fails the run. Inputs and outputs are allocated at
exactly their size in the driver, so one element read or written past either is caught; the
arena is one allocation, so an overflow from one arena tensor into the next is not.

- The sample encoder (fp32 and int8) and an encoder layer of odd sizes (tails in every kernel),
  on two threads, compared with onnxruntime.
- The differential test's drawn MLPs (tests/models/test_differential.py: its strategy, model builder
  and error bound) and test_quantize's drawn int8 MLPs (equal bit for bit to their quantized
  twin run by the exact reference, and by onnxruntime where its int8 is exact: tests/conftest.py's
  int8_oracles), all of a target's cases in one sanitized driver process (tests/runs.py).
- x86-amx's BITMASK layers (int8 and bf16; tiles expanded from masks and nonzeros), forced, at
  odd shapes and densities down to an all-zero weight.
- Negative controls: a compiled model's C source with one deliberate fault injected (a write
  past the output, a read past the input, a write past the arena, a signed overflow, a leak),
  built the same way, must fail with the sanitizer's report; the same source unpatched passes.

The test ids say how each target ran here (`generic:native`, `native=x86-avx2:native`);
sanitized code runs on the host only, so x86-amx runs through its emulation header where the CPU
has AVX-512 but no AMX and is skipped, saying so, where it has neither.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

from sparsec import emulation
from sparsec.codegen import targets
from sparsec.errors import RuntimeFailure
from tests.codegen.test_bf16_kernels import one_node_model as bf16_model
from tests.codegen.test_bf16_kernels import reference as bf16_reference
from tests.conftest import (
    HOST_TARGETS,
    host_target,
    int8_expected,
    int8_oracles,
    int8_outputs_equal,
    run_onnxruntime,
)
from tests.faults import patched_library
from tests.models.test_differential import (
    check_against_onnxruntime,
    edge,
    inputs_of,
    mlp_cases,
    to_onnx,
)
from tests.models.test_quantized_models import mlp as quantized_mlp
from tests.models.test_quantized_models import mlps as quantized_mlps
from tests.runs import Runs

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all")
MLP_EXAMPLES = 35  # drawn fp32 MLPs per target
INT8_EXAMPLES = 8  # drawn int8 MLPs per target

# The int8 and bf16 cases also run x86-amx's tile kernels, through its emulation header where
# the host lacks AMX (its fp32 kernels are x86-avx512's, covered by "native" on such a host);
# the emulated build needs AVX-512, so on an AVX2-only host these cases are skipped, saying so.
INT8_TARGETS = HOST_TARGETS + [host_target("x86-amx")]


def tiny_bert_module():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_case(target, case: str):
    return pytest.param(*target.values, case, id=f"{case}-{target.id}", marks=target.marks)


@pytest.mark.parametrize("target,case", [
    with_case(target, case) for target in HOST_TARGETS
    for case in ("sample", "sample-int8", "sample-bf16", "odd-sizes")]
    + [with_case(INT8_TARGETS[-1], case) for case in ("sample-int8", "sample-bf16")])
def test_encoders_run_clean_under_sanitizers(target, case, compiler):
    tiny_bert = tiny_bert_module()
    if case == "odd-sizes":
        model = tiny_bert.tiny_bert(3, hidden=36, num_heads=3, ffn=72, layers=1, vocab=64,
                                    seq=23)
        feeds = tiny_bert.tiny_bert_inputs(3, vocab=64, seq=23, padded=5)
    else:
        model, feeds = tiny_bert.tiny_bert(), tiny_bert.tiny_bert_inputs()
    quantize = {"sample-int8": "dynamic", "sample-bf16": "bf16"}.get(case)
    result = compiler.compile(model, target, extra_cflags=SANITIZE, quantize=quantize)
    outputs = emulation.run(result.library, targets.resolve(target), result.info, feeds,
                            threads=2, cache_dir=compiler.cache_dir, driver_flags=SANITIZE)
    got = outputs["last_hidden_state"]
    wanted = run_onnxruntime(model, feeds)[0]
    # int8 against fp32: the sample's --quantize tolerance (tests/models/test_tiny_bert.py)
    # bf16: tests/models/test_tiny_bert.py's bound, 1 % of the largest output
    tolerance = {"dynamic": 0.02 * (wanted.max() - wanted.min()),
                 "bf16": 0.01 * np.max(np.abs(wanted))}.get(quantize, 1e-4)
    np.testing.assert_allclose(got, wanted, rtol=0, atol=tolerance)


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_random_mlps_match_onnxruntime_under_sanitizers(target, compiler):
    """tests/models/test_differential.py's drawn MLPs, sanitized, on two threads, in one driver."""
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=2, driver_flags=SANITIZE)
    patterns: Counter[str] = Counter()
    submitted = []

    @settings(max_examples=MLP_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=mlp_cases())
    # a fully dense weight, so that the dense kernel runs sanitized whatever the draws give
    @example(case=edge("fully_dense_weight", (17, 33),
                       (33, {"op": "Gemm", "trans_b": 1, "bias": "1N", "activation": "Tanh"}),
                       (17, {"op": "Gemm", "bias": "MN", "beta": -1.5})))
    def check(case):
        model = to_onnx(case)
        result = compiler.compile(model, target, extra_cflags=SANITIZE)
        patterns.update(layer["pattern"] for layer in result.info["layers"]
                        if layer["op"] == "Dense")
        runs.submit(result, inputs_of(case), functools.partial(check_against_onnxruntime,
                                                               case, model), label=repr(case))
        submitted.append(case)

    check()
    assert runs.flush() == len(submitted) > 0
    assert patterns["dense"] and set(patterns) - {"dense"}, \
        f"both dense and sparse kernels must run; the patterns chosen were {dict(patterns)}"


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles()])
@pytest.mark.parametrize("target", INT8_TARGETS)
def test_quantized_mlps_are_exact_under_sanitizers(target, with_onnxruntime, compiler):
    """tests/models/test_quantized_models.py's drawn int8 MLPs, sanitized: bit for bit as their
    DynamicQuantizeLinear -> MatMulInteger twin graph, by the exact reference (and
    onnxruntime)."""
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=2, driver_flags=SANITIZE)
    submitted = []

    @settings(max_examples=INT8_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=quantized_mlps())
    def check(case):
        options = dict(case)
        rng = np.random.default_rng(options.pop("seed"))
        fp32, quantized = quantized_mlp(rng, **options)
        result = compiler.compile(fp32, target, quantize="dynamic", mixed_precision=False,
                                  extra_cflags=SANITIZE)
        assert all(layer["weight_dtype"] == "int8" for layer in result.info["layers"]
                   if "shape" in layer)
        x = rng.standard_normal((options["m"], options["widths"][0])).astype(np.float32)
        expected = int8_expected(quantized, {"x": x}, with_onnxruntime)
        runs.submit(result, {"x": x}, functools.partial(int8_outputs_equal, expected),
                    label=str(case))
        submitted.append(case)

    check()
    assert runs.flush() == len(submitted) > 0


BF16_SHAPES = [(5, 1, 17), (70, 35, 20), (33, 130, 40), (16, 64, 16)]  # (M, K, N): tails


@pytest.mark.parametrize("target", INT8_TARGETS)
def test_bf16_layers_run_clean_under_sanitizers(target, compiler):
    """--dtype bf16 layers of odd shapes (K = 1 is half a pair; x86-amx rounds K up to whole
    B tiles), dense and sparse, sanitized, within tests/codegen/test_bf16_kernels.py's bound."""
    resolved = targets.resolve(target)
    runs = Runs(resolved, compiler.cache_dir, threads=2, driver_flags=SANITIZE)
    rng = np.random.default_rng(0)
    # AVX-512 libraries also carry the 1x16 column kernel: forced on 1x16-pruned weights
    cases = [(2, 1, 1.0, None), (2, 1, 0.3, None)]
    if "avx512f" in resolved.isas:
        cases.append((1, 16, 0.3, "1x16"))
    for m, k, n in BF16_SHAPES:
        for rows, cols, density, pattern in cases:
            keep = rng.random((-(-k // rows), -(-n // cols))) < density
            keep = np.repeat(np.repeat(keep, rows, 0), cols, 1)[:k, :n]
            w = (rng.standard_normal((k, n)) * keep).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            x = rng.standard_normal((m, k)).astype(np.float32)
            result = compiler.compile(bf16_model(m, k, n, w, b, "Relu"), target,
                                      quantize="bf16", force_pattern=pattern,
                                      mixed_precision=False, extra_cflags=SANITIZE)
            expected, bound = bf16_reference(x, w, b, "Relu")
            runs.submit(result, {"x": x}, functools.partial(within, expected, bound),
                        label=f"{m}x{k}x{n} {rows}x{cols} density {density}")
    assert runs.flush() == len(cases) * len(BF16_SHAPES)


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles()])
@pytest.mark.parametrize("target", [host_target("x86-amx")])
def test_bitmask_layers_run_clean_under_sanitizers(target, with_onnxruntime, compiler):
    """x86-amx's BITMASK layers, int8 and bf16, forced (the gate picks them only for weights
    past 2 MiB) at odd shapes and densities down to an all-zero weight, whose tiles expand
    from no nonzeros at all: sanitized, int8 bit for bit as the exact reference (and
    onnxruntime), bf16 within bound."""
    runs = Runs(targets.resolve(target), compiler.cache_dir, threads=2, driver_flags=SANITIZE)
    rng = np.random.default_rng(0)
    for m, k, n in ((5, 1, 17), (33, 130, 40), (20, 70, 33)):
        for density in (0.0, 0.35, 1.0):
            fp32, quantized = quantized_mlp(rng, m, [k, n], [density], [True], [True], (1, 1))
            x = rng.standard_normal((m, k)).astype(np.float32)
            result = compiler.compile(fp32, target, quantize="dynamic", force_pattern="bitmask",
                                      extra_cflags=SANITIZE)
            expected = int8_expected(quantized, {"x": x}, with_onnxruntime)
            runs.submit(result, {"x": x}, functools.partial(int8_outputs_equal, expected),
                        label=f"int8 {m}x{k}x{n} density {density}")
            w = (rng.standard_normal((k, n)) * (rng.random((k, n)) < density)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            result = compiler.compile(bf16_model(m, k, n, w, b, "Relu"), target, quantize="bf16",
                                      force_pattern="bitmask", extra_cflags=SANITIZE)
            expected, bound = bf16_reference(x, w, b, "Relu")
            runs.submit(result, {"x": x}, functools.partial(within, expected, bound),
                        label=f"bf16 {m}x{k}x{n} density {density}")
    assert runs.flush() == 18


def within(expected: np.ndarray, bound: np.ndarray, outputs: dict) -> None:
    (actual,) = outputs.values()
    error = np.abs(actual - expected)
    assert np.all(error <= bound), f"{int((error > bound).sum())} outputs past the bound"


# --- negative controls: the mode catches a broken kernel -----------------------------------------

CONTROL = edge("control", (3, 17),
               (17, {"block": (4, 1), "density": 0.3, "bias": "N", "activation": "Relu"}),
               (5, {}))  # output 3 x 5 floats: 60 bytes, not a whole number of cache lines

# C statements run at the end of sparsec__model_run, each one fault, and what the sanitizer
# must say. The output holds 15 floats, the input 51, and the arena sparsec__arena_bytes.
FAULTS = {
    "clean": ("", None),
    "write-past-output": ("((float *)outputs[0])[15] = 1.0f;",
                          r"heap-buffer-overflow[\s\S]*WRITE of size 4"),
    "read-past-input": ("{ volatile float sink = ((const float *)inputs[0])[51]; (void)sink; }",
                        r"heap-buffer-overflow[\s\S]*READ of size 4"),
    "write-past-arena": ("arena[sparsec__arena_bytes] = 1;",
                         r"heap-buffer-overflow[\s\S]*WRITE of size 1"),
    "signed-overflow": ("{ volatile int big = 2147483647; big += 1; }",
                        r"runtime error: signed integer overflow"),
    "leak": ("{ unsigned char *volatile lost = malloc(4096); lost[0] = 1; lost = NULL; }",
             r"LeakSanitizer: detected memory leaks[\s\S]*4096 byte"),
}


def faulty_library(result, fault: str, workdir: Path) -> Path:
    """`result`'s kept C source (in workdir/src) with `fault` injected, sanitized."""
    return patched_library(workdir / "src", FAULTS[fault][0], workdir / f"build-{fault}",
                           SANITIZE)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_injected_fault_fails_the_sanitized_run(fault, compiler, tmp_path):
    """A kernel that reads or writes one element too far, overflows or leaks does not pass:
    the sanitized driver's run fails with the report; unpatched, the same source passes."""
    model = to_onnx(CONTROL)
    result = compiler.compile(model, "generic", extra_cflags=SANITIZE,
                              keep_source=tmp_path / "src")
    assert result.info["outputs"][0]["shape"] == [3, 5]
    library = faulty_library(result, fault, tmp_path)
    runs = Runs(targets.resolve("generic"), compiler.cache_dir, driver_flags=SANITIZE)
    runs.submit(dataclasses.replace(result, library=library), inputs_of(CONTROL),
                functools.partial(check_against_onnxruntime, CONTROL, model), label=fault)
    report = FAULTS[fault][1]
    if report is None:
        assert runs.flush() == 1
        return
    with pytest.raises(AssertionError, match=report):
        runs.flush()


def test_a_leak_is_blamed_on_its_job_only(compiler, tmp_path):
    """One driver process, a leaking job between clean ones: only that job fails."""
    model = to_onnx(CONTROL)
    result = compiler.compile(model, "generic", extra_cflags=SANITIZE,
                              keep_source=tmp_path / "src")
    clean, leaking = (faulty_library(result, fault, tmp_path) for fault in ("clean", "leak"))
    feeds = inputs_of(CONTROL)
    jobs = [emulation.Job(library, result.info, feeds) for library in (clean, leaking, clean)]
    outputs = emulation.run_batch(jobs, targets.resolve("generic"), compiler.cache_dir,
                                  driver_flags=SANITIZE)
    assert isinstance(outputs[1], RuntimeFailure)
    assert "memory leaked" in str(outputs[1]) and "LeakSanitizer" in str(outputs[1])
    for index in (0, 2):
        check_against_onnxruntime(CONTROL, model, outputs[index])
