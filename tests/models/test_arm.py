"""The AArch64 target end to end: cross-compiled here, run through runtime_c/driver.c under
qemu-user (or natively on an ARM host), compared with onnxruntime on this host. Cases are
batched into few emulator runs where they can be: qemu starts in ~0.05 s, but each run also
builds a library."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsec import emulation
from sparsec.cli import main
from sparsec.codegen import build, targets
from sparsec.errors import RuntimeFailure
from tests.conftest import int8_expected, int8_oracles, int8_outputs_equal, run_onnxruntime
from tests.graphs import mlp
from tests.runs import Runs

ROOT = Path(__file__).resolve().parents[2]
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
    lowered = dict(quantize="dynamic", mixed_precision=False)
    arm = run_arm(compiler, model, feeds, **lowered)["last_hidden_state"]
    host = compiler.load(model, "generic", **lowered).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(arm, host, rtol=0, atol=1e-5)


def test_mlps_match_onnxruntime(compiler):
    """Drawn MLPs, all run in one emulator process once hypothesis has drawn them."""
    runs = Runs(ARM, compiler.cache_dir)

    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(k=st.integers(1, 40), n=st.integers(1, 40), m=st.integers(1, 9),
           density=st.floats(0.0, 1.0), activation=st.sampled_from(["Relu", "Tanh", ""]),
           seed=st.integers(0, 2**16))
    def check(k, n, m, density, activation, seed):
        model = mlp(k=k, n=n, m=m, density=density, seed=seed, activation=activation)
        x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
        runs.submit(compiler.compile(model, "arm-neon"), {"x": x},
                    functools.partial(close_to, run_onnxruntime(model, {"x": x})[0]),
                    label=f"mlp k={k} n={n} m={m} density={density} {activation} seed={seed}")

    check()
    runs.flush()


def close_to(expected, outputs: dict) -> None:
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-4, atol=1e-5)


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
    """ARMv8.0 (cortex-a53) lacks SDOT: an arm-neon-dotprod library's CPU check names the
    missing feature instead of dying on SIGILL; arm-neon builds run there (and call their SDOT
    kernels only where the core has it)."""
    result = compiler.compile(mlp(k=16, n=8, m=3, density=0.5), "arm-neon-dotprod",
                              quantize="dynamic", mixed_precision=False)
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
    result = compiler.compile(model, "arm-neon-dotprod", quantize="dynamic", mixed_precision=False)
    assert any("neondot" in layer["kernel"] for layer in result.info["layers"])
    arm = emulation.run(result.library, DOTPROD, result.info, feeds,
                        cache_dir=compiler.cache_dir)["last_hidden_state"]
    host = compiler.load(model, "generic", quantize="dynamic",
                         mixed_precision=False).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(arm, host, rtol=0, atol=1e-5)


def sample_tiny_bert():
    import onnx

    model = onnx.load(str(ROOT / "samples" / "tiny_bert.onnx"))
    feeds = {name: np.load(ROOT / "samples" / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    return model, feeds


def test_arm_neon_calls_sdot_only_where_the_core_has_it(compiler):
    """One arm-neon int8 library: SDOT kernels on a core with the dot product (qemu's default
    CPU), the widening-multiply kernels on a Cortex-A53. The integer sums are the same, so the
    two runs agree bit for bit, and with the host's portable int8 build up to the fp32 layers'
    own rounding (FMA contraction on AArch64)."""
    model, feeds = sample_tiny_bert()
    result = compiler.compile(model, "arm-neon", quantize="dynamic", mixed_precision=False)
    int8_layers = [layer for layer in result.info["layers"] if layer.get("weight_dtype") == "int8"]
    assert int8_layers and all(layer["kernel"].endswith("__neon")
                               and layer["dispatch"]["asimddp"].endswith("__neondot")
                               for layer in int8_layers), int8_layers
    sdot, widening = (Runs(ARM, compiler.cache_dir, cpu=cpu) for cpu in (None, "cortex-a53"))
    outputs = {}
    for runs, name in ((sdot, "sdot"), (widening, "widening")):
        runs.submit(result, feeds, functools.partial(outputs.__setitem__, name), label=name)
        runs.flush()
    np.testing.assert_array_equal(outputs["sdot"]["last_hidden_state"],
                                  outputs["widening"]["last_hidden_state"])
    host = compiler.load(model, "generic", quantize="dynamic",
                         mixed_precision=False).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(outputs["sdot"]["last_hidden_state"], host, rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles(128)])
def test_int8_weights_of_minus_128_on_every_arm_kernel(with_onnxruntime, compiler, tmp_path):
    """An imported int8 model may hold the code -128, which pushes a pair of widening products
    past int16: those layers take the 32-bit pairwise path. SDOT, the widening fallback and
    arm-neon-dotprod all equal the exact reference (and this host's onnxruntime, where its int8
    is exact) bit for bit."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(mlp(k=64, n=24, m=5, density=1.0, seed=7), str(source))
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    model = onnx.load(str(target))
    (codes,) = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
                and len(t.dims) == 2]
    values = onnx.numpy_helper.to_array(codes).copy()
    values[:, :3] = -128
    codes.CopyFrom(onnx.numpy_helper.from_array(values, codes.name))
    x = np.random.default_rng(8).standard_normal((5, 64)).astype(np.float32)
    x[1] = x.min()  # activation codes of -128 (stored minus 128) against those weights
    expected = int8_expected(model, {"x": x}, with_onnxruntime)
    for name, cpu in (("arm-neon", None), ("arm-neon", "cortex-a53"), ("arm-neon-dotprod", None)):
        result = compiler.compile(model, name)
        assert any(layer.get("weight_dtype") == "int8" for layer in result.info["layers"])
        runs = Runs(targets.TARGETS[name], compiler.cache_dir, cpu=cpu)
        runs.submit(result, {"x": x}, functools.partial(int8_outputs_equal, expected),
                    label=f"{name} cpu={cpu}")
        runs.flush()


def test_one_driver_process_runs_many_jobs_and_reports_each(compiler):
    """A batch keeps going past a job that fails (its message comes back) and one that crashes
    the process (the rest run in a new one)."""
    model = mlp(k=8, n=4, m=2, density=1.0)
    good = compiler.compile(model, "arm-neon")
    bert = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    tiny_bert = importlib.util.module_from_spec(bert)
    bert.loader.exec_module(tiny_bert)
    gather = compiler.compile(tiny_bert.tiny_bert(), "arm-neon")
    bad_ids = tiny_bert.tiny_bert_inputs()
    bad_ids["input_ids"][0, 0] = 10_000
    crashing = crashing_library(compiler.cache_dir)
    crash_info = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
                  "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}]}
    xs = [np.full((2, 8), i, np.float32) for i in range(4)]
    jobs = [emulation.Job(good.library, good.info, {"x": xs[0]}),
            emulation.Job(gather.library, gather.info, bad_ids),
            emulation.Job(good.library, good.info, {"x": xs[1]}, threads=2),
            emulation.Job(crashing, crash_info, {"x": np.ones(1, np.float32)}),
            emulation.Job(good.library, good.info, {"x": xs[2]}),
            emulation.Job(good.library, good.info, {"x": xs[3]})]
    results = emulation.run_batch(jobs, ARM, compiler.cache_dir)
    assert isinstance(results[1], RuntimeFailure) and "Gather" in str(results[1])
    assert isinstance(results[3], RuntimeFailure) and "crashing_run" in str(results[3])
    for index, x in zip((0, 2, 4, 5), xs):
        np.testing.assert_allclose(results[index]["y"], run_onnxruntime(model, {"x": x})[0],
                                   rtol=1e-4, atol=1e-5)


CRASHING_LIBRARY = r"""
#include <stdio.h>
#include <stdlib.h>
int sparsec_cpu_check(char *message, size_t size) { (void)message; (void)size; return 0; }
int sparsec_create_threads(void **context, int threads) {
  (void)threads; *context = malloc(1); return 0; }
void sparsec_destroy(void *context) { free(context); }
const char *sparsec_last_error(void *context) { (void)context; return ""; }
int sparsec_run(void *context, const void **in, void **out) {
  (void)context; (void)in; (void)out;
  fputs("crashing_run\n", stdout); fflush(stdout); abort(); }
"""


def crashing_library(cache_dir: Path) -> Path:
    """An AArch64 library with sparsec's entry points whose run aborts the process."""
    source, library = cache_dir / "crashing.c", cache_dir / "crashing.so"
    source.write_text(CRASHING_LIBRARY)
    subprocess.run([build.find_compiler(ARM), "-shared", "-fPIC", str(source), "-o",
                    str(library)], check=True)
    return library
