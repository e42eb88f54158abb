"""The AArch64 target end to end: cross-compiled here, run through runtime_c/driver.c under
qemu-user (or natively on an ARM host), compared with onnxruntime on this host. Cases are
batched into few emulator runs where they can be: qemu starts in ~0.05 s, but each run also
builds a library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsec import emulation
from sparsec.cli import main
from sparsec.codegen import targets
from sparsec.errors import RuntimeFailure
from tests.conftest import run_onnxruntime
from tests.graphs import mlp

ROOT = Path(__file__).resolve().parents[1]
ARM = targets.TARGETS["arm-neon"]
MODE = targets.execution_mode(ARM)
pytestmark = pytest.mark.skipif(MODE in ("unavailable", "compile-only"),
                                reason=f"arm-neon is {MODE} here: no cross compiler or no "
                                       "qemu-aarch64 (.ci/run installs both)")


def run_arm(compiler, model, feeds, cpu=None, **options):
    result = compiler.compile(model, "arm-neon", **options)
    return emulation.run(result.library, ARM, result.info, feeds,
                         cache_dir=compiler.cache_dir, cpu=cpu)


def test_tiny_bert_sample_matches_onnxruntime(compiler):
    import onnx

    model = onnx.load(str(ROOT / "samples" / "tiny_bert.onnx"))
    feeds = {name: np.load(ROOT / "samples" / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    got = run_arm(compiler, model, feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, run_onnxruntime(model, feeds)[0], rtol=0, atol=1e-4)


def test_quantized_tiny_bert_equals_the_host_build(compiler):
    """The portable int8 kernels on ARM compute the same integers as on x86."""
    import onnx

    model = onnx.load(str(ROOT / "samples" / "tiny_bert.onnx"))
    feeds = {name: np.load(ROOT / "samples" / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    arm = run_arm(compiler, model, feeds, quantize="dynamic")["last_hidden_state"]
    host = compiler.load(model, "generic", quantize="dynamic").run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(arm, host, rtol=0, atol=1e-5)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(k=st.integers(1, 40), n=st.integers(1, 40), m=st.integers(1, 9),
       density=st.floats(0.0, 1.0), activation=st.sampled_from(["Relu", "Tanh", ""]),
       seed=st.integers(0, 2**16))
def test_mlps_match_onnxruntime(k, n, m, density, activation, seed, compiler):
    model = mlp(k=k, n=n, m=m, density=density, seed=seed, activation=activation)
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    got = run_arm(compiler, model, {"x": x})["y"]
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_cortex_a53_runs_the_portable_build(compiler):
    """An ARMv8.0 core without the dot-product extension runs arm-neon libraries."""
    model = mlp(k=16, n=8, m=3, density=0.5)
    x = np.ones((3, 16), np.float32)
    got = run_arm(compiler, model, {"x": x}, cpu="cortex-a53")["y"]
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_run_time_errors_come_back_with_the_message(compiler):
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    tiny_bert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_bert)
    feeds = tiny_bert.tiny_bert_inputs()
    feeds["input_ids"][0, 0] = 10_000  # outside the vocabulary
    with pytest.raises(RuntimeFailure, match="Gather"):
        run_arm(compiler, tiny_bert.tiny_bert(), feeds)


def test_verify_command(tmp_path, capsys, cache_dir):
    assert main(["verify", str(ROOT / "samples" / "mlp_sparse.onnx"), "--target", "arm-neon",
                 "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "run emulated" in out or "run native" in out
    assert "-> ok" in out


DOTPROD = targets.TARGETS["arm-neon-dotprod"]


def test_dotprod_library_refuses_a_core_without_it(compiler):
    """ARMv8.0 (cortex-a53) lacks SDOT: the library's CPU check names the missing feature
    instead of dying on SIGILL; the plain arm-neon build is the fallback for such cores."""
    result = compiler.compile(mlp(k=16, n=8, m=3, density=0.5), "arm-neon-dotprod",
                              quantize="dynamic")
    with pytest.raises(RuntimeFailure, match="asimddp"):
        emulation.run(result.library, DOTPROD, result.info, {"x": np.ones((3, 16), "f4")},
                      cache_dir=compiler.cache_dir, cpu="cortex-a53")


def test_quantized_tiny_bert_on_dot_product_kernels(compiler):
    """The int8 layers run on SDOT (4x1 groups, codes stored minus 128); they equal the host's
    portable int8 build, up to the fp32 layers' own rounding (FMA contraction on AArch64)."""
    import onnx

    model = onnx.load(str(ROOT / "samples" / "tiny_bert.onnx"))
    feeds = {name: np.load(ROOT / "samples" / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    result = compiler.compile(model, "arm-neon-dotprod", quantize="dynamic")
    assert any("neondot" in layer["kernel"] for layer in result.info["layers"])
    arm = emulation.run(result.library, DOTPROD, result.info, feeds,
                        cache_dir=compiler.cache_dir)["last_hidden_state"]
    host = compiler.load(model, "generic", quantize="dynamic").run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(arm, host, rtol=0, atol=1e-5)
