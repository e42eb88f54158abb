import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import sparsec
from sparsec.codegen import targets as target_table
from sparsec.errors import InputError, LoadError, RuntimeFailure
from tests.conftest import HOST_TARGETS, run_onnxruntime
from tests.graphs import mlp


@pytest.fixture
def module(compiler):
    return compiler.load(mlp(k=8, n=16, m=2), "generic")


def test_run_matches_onnxruntime(module):
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    (expected,) = run_onnxruntime(mlp(k=8, n=16, m=2), {"x": x})
    np.testing.assert_allclose(module.run({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module(x), expected, rtol=1e-5, atol=1e-6)


def test_signature(module):
    (spec,) = module.inputs
    assert (spec.name, spec.shape, spec.dtype) == ("x", (2, 8), np.float32)
    assert module.outputs[0].shape == (2, 16)
    assert module.info["target"] == "generic" and module.target == "generic"
    assert "x: float32[2, 8]" in repr(module)


@pytest.mark.parametrize("feeds,message", [
    ({}, "missing 'x'"),
    ({"x": np.zeros((2, 8), np.float32), "z": 1}, "unknown 'z'"),
    ({"x": np.zeros((2, 8), np.float64)}, "dtype float64, the model expects float32"),
    ({"x": np.zeros((3, 8), np.float32)}, r"shape \(3, 8\), the model expects \(2, 8\)"),
    ({"x": "text"}, "must be a numpy array"),
])
def test_bad_inputs_say_what_was_expected(module, feeds, message):
    with pytest.raises(InputError, match=message):
        module.run(feeds)


def test_positional_arity(module):
    with pytest.raises(InputError, match="takes 1 input"):
        module(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32))


def test_non_contiguous_and_readonly_inputs_are_accepted(module):
    x = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32).T
    assert not x.flags.c_contiguous
    expected = module.run({"x": np.ascontiguousarray(x)})["y"]
    np.testing.assert_array_equal(module.run({"x": x})["y"], expected)
    frozen = np.ascontiguousarray(x)
    frozen.setflags(write=False)
    np.testing.assert_array_equal(module.run({"x": frozen})["y"], expected)


def test_close_twice_and_use_after_close(module):
    module.close()
    module.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        module.run({"x": np.zeros((2, 8), np.float32)})


def test_context_manager_closes(compiler):
    path = compiler.compile(mlp(), "generic").library
    with sparsec.load(path) as module:
        module.run({"x": np.zeros((2, 8), np.float32)})
    with pytest.raises(RuntimeFailure):
        module.run({"x": np.zeros((2, 8), np.float32)})


def test_threads_share_one_module(module):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(8)]
    expected = [module.run({"x": x})["y"] for x in xs]
    failures = []

    def work(i):
        for _ in range(50):
            if not np.array_equal(module.run({"x": xs[i]})["y"], expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_load_errors(tmp_path):
    with pytest.raises(LoadError, match="no compiled model"):
        sparsec.load(tmp_path / "missing.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(LoadError, match="cannot load"):
        sparsec.load(junk)


def test_abi_rejects_null_pointers(module):
    from sparsec.module import _ffi

    ffi, lib = _ffi(), module._lib
    assert lib.sparsec_run(module._context, ffi.NULL, ffi.NULL) == 3
    assert "must not be NULL" in ffi.string(lib.sparsec_last_error(module._context)).decode()
    nulls = ffi.new("void *[]", 1)
    assert lib.sparsec_run(module._context, nulls, nulls) == 3
    assert "input 0 is NULL" in ffi.string(lib.sparsec_last_error(module._context)).decode()
    assert lib.sparsec_run(ffi.NULL, nulls, nulls) == 3
    assert lib.sparsec_create(ffi.NULL) == 3
    assert ffi.string(lib.sparsec_status_message(1)).decode().startswith("this CPU")


@pytest.mark.skipif(target_table.host_arch() != "x86_64", reason="x86 feature bits")
def test_library_for_missing_features_refuses_to_load(compiler):
    # The test build hides AVX2 (bit 0) from the runtime's CPU check.
    result = compiler.compile(mlp(), "x86-avx2", extra_cflags=("-DSPARSEC_HIDE_FEATURES=1",))
    with pytest.raises(LoadError, match="lacks: avx2; rebuild it with --target native"):
        sparsec.load(result.library)


def test_runtime_reshape_target_is_checked(compiler):
    from onnx import helper

    from tests.graphs import model

    m = model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")],
              [("x", [2, 6])], [("y", [3, 4])])
    m.graph.input.append(helper.make_tensor_value_info("shape", 7, [2]))
    module = compiler.load(m, "generic")
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for good in ([3, 4], [-1, 4], [3, -1]):
        out = module.run({"x": x, "shape": np.array(good, np.int64)})["y"]
        np.testing.assert_array_equal(out, x.reshape(3, 4))
    for bad in ([4, 3], [-1, -1], [2, 6]):
        with pytest.raises(InputError,
                           match=r"Reshape node r: .* compiled for output shape \[3, 4\]"):
            module.run({"x": x, "shape": np.array(bad, np.int64)})


def test_rebuilt_library_at_the_same_path_loads_the_new_model(tmp_path, cache_dir):
    path = tmp_path / "m.so"
    first = sparsec.load(sparsec.compile(mlp(k=8, n=16), "generic", path, cache_dir=cache_dir))
    second = sparsec.load(sparsec.compile(mlp(k=4, n=3), "generic", path, cache_dir=cache_dir))
    assert first.inputs[0].shape == (2, 8) and second.inputs[0].shape == (2, 4)
    assert second.run({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
    assert first.run({"x": np.ones((2, 8), np.float32)})["y"].shape == (2, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h", "m.so", "sparsec.h"]


def test_zero_size_outputs_compute_nothing(compiler):
    from onnx import helper

    from tests.graphs import model

    m = model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", [0, 3, 4]), ("b", [4, 5])],
              [("y", [0, 3, 5])])
    module = compiler.load(m, "generic")
    out = module.run({"a": np.zeros((0, 3, 4), np.float32), "b": np.ones((4, 5), np.float32)})
    assert out["y"].shape == (0, 3, 5)


def test_other_byte_order_is_converted(module):
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(module.run({"x": x.astype(">f4")})["y"],
                                  module.run({"x": x})["y"])


def test_integer_matmul_names_the_op_and_the_supported_dtypes(compiler):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("a", TensorProto.INT32, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])],
        [helper.make_tensor("w", TensorProto.INT32, [2, 2], [1, 2, 3, 4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(sparsec.KernelNotFoundError,
                       match=r"node 'mm' \(op MatMul\) works on int32; sparsec runs MatMul on "
                             r"float32 only"):
        compiler.compile(m, "generic")


STRESS = """
import sys
import numpy as np
import sparsec
path = sys.argv[1]
x = np.random.default_rng(0).standard_normal((70, 64)).astype(np.float32)
with sparsec.load(path, threads=1) as serial:
    expected = serial.run({"x": x})["y"]
for threads in (2, 3, 4):
    for _ in range(20):  # create/destroy cycles start and join the pool each time
        with sparsec.load(path, threads=threads) as module:
            assert module.threads == threads
            for _ in range(50):
                assert np.array_equal(module.run({"x": x})["y"], expected)
print("ok")
"""


@pytest.mark.parametrize("pattern", ["1x16", "4x1", "dense"])
def test_thread_pool_gives_serial_results_and_never_hangs(compiler, tmp_path, pattern):
    import subprocess
    import sys

    # On x86 these kernels run as parallel regions (4x1: two per 64-token tile, one of
    # them a tail tile here); a deadlock fails by timeout instead of hanging the suite.
    path = compiler.compile(mlp(k=64, n=64, m=70, density=0.2), "native",
                            force_pattern=pattern).library
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_threads_argument_is_validated(compiler):
    path = compiler.compile(mlp(), "generic").library
    with pytest.raises(LoadError, match="threads must be a positive integer"):
        sparsec.load(path, threads=0)
    assert sparsec.load(path, threads=3).threads == 3


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may use, read from sysfs
    here independently of runtime.c."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                   topology.joinpath("core_id").read_text().strip()))
    return len(cores)


@pytest.mark.skipif(not Path("/sys/devices/system/cpu/cpu0/topology/core_id").exists(),
                    reason="no Linux sysfs CPU topology on this host")
def test_default_threads_is_one_per_physical_core(compiler):
    path = compiler.compile(mlp(), "generic").library
    with sparsec.load(path) as module:
        assert module.threads == physical_cores()


def test_small_layers_stay_on_the_calling_thread(compiler):
    """A layer predicted to take less than PARALLEL_MIN_NS does not hand work to the pool."""
    from sparsec.codegen import costs

    onnx_model = mlp(k=64, n=64, m=4, density=0.1)
    default = compiler.compile(onnx_model, "native", parallel_min_ns=None)
    forced = compiler.compile(onnx_model, "native", parallel_min_ns=0)
    parallel = [layer for layer in forced.info["layers"] if "threads" in layer]
    if not parallel:
        pytest.skip("the native target has no parallel kernel for this layer")
    assert costs.PARALLEL_MIN_NS > 0
    assert [layer["threads"] for layer in parallel] == ["pool"] * len(parallel)
    assert all(layer.get("threads") in (None, "caller") for layer in default.info["layers"])


def test_profile_sums_each_layers_time_over_runs(compiler):
    module = compiler.load(mlp(k=16, n=8, m=4), "native", profile=True)
    x = np.ones((4, 16), np.float32)
    assert [layer["ms"] for layer in module.profile()] == [0.0] * len(module.info["layers"])
    module.run({"x": x})
    once = [layer["ms"] for layer in module.profile()]
    module.run({"x": x})
    twice = module.profile()
    assert [layer["node"] for layer in twice] == [layer["node"] for layer in module.info["layers"]]
    assert all(t["ms"] >= o > 0 for t, o in zip(twice, once))
    module.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        module.profile()
    plain = compiler.load(mlp(k=16, n=8, m=4), "native")
    with pytest.raises(RuntimeFailure, match="without profiling"):
        plain.profile()


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_misaligned_and_offset_inputs_give_the_same_results(compiler, target):
    """A float32 view at an odd byte address is copied (numpy calls it unaligned); one at a
    4-byte offset (aligned for its dtype, not for vectors) is read in place, so every kernel
    must use unaligned loads on inputs."""
    module = compiler.load(mlp(k=40, n=48, m=16, density=0.2), target)
    x = np.random.default_rng(4).standard_normal((16, 40)).astype(np.float32)
    expected = module.run({"x": x})["y"]
    odd = np.zeros(x.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(x.shape)
    odd[...] = x
    assert not odd.flags.aligned
    offset = np.zeros(x.size + 1, np.float32)[1:].reshape(x.shape)
    offset[...] = x
    assert offset.flags.aligned and offset.ctypes.data % 16
    for view in (odd, offset):
        np.testing.assert_array_equal(module.run({"x": view})["y"], expected)


def test_nan_and_inf_propagate_as_in_onnxruntime(compiler):
    """Through a dense product (a pruned weight skips its term: see README, Numerics), the
    activations and Softmax, NaN and infinities land where onnxruntime puts them."""
    from onnx import helper

    from tests.graphs import model

    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Relu", ["p"], ["relu"]),
             helper.make_node("Sigmoid", ["x"], ["sigmoid"]),
             helper.make_node("Tanh", ["x"], ["tanh"]),
             helper.make_node("Softmax", ["x"], ["softmax"], axis=-1),
             helper.make_node("Clip", ["x", "lo", "hi"], ["clip"])]
    outputs = [("relu", [4, 16]), ("sigmoid", [4, 8]), ("tanh", [4, 8]), ("softmax", [4, 8]),
               ("clip", [4, 8])]
    m = model(nodes, [("x", [4, 8])], outputs,
              [("w", w), ("lo", np.float32(-1)), ("hi", np.float32(1))])
    x = rng.standard_normal((4, 8)).astype(np.float32)
    x[0, 1], x[1, 3], x[2, 5] = np.nan, np.inf, -np.inf
    expected = dict(zip([name for name, _ in outputs], run_onnxruntime(m, {"x": x})))
    for target in ("generic", "native"):
        got = compiler.load(m, target, force_pattern="dense").run({"x": x})
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} on {target}")


def test_abi_version_is_one_number_everywhere(module):
    """The header's SPARSEC_ABI_VERSION, what the library returns, what its info says and what
    the loader accepts are the same number."""
    import re

    from sparsec.codegen.build import runtime_dir
    from sparsec.version import ABI_VERSION

    header = (runtime_dir() / "sparsec.h").read_text()
    assert int(re.search(r"#define SPARSEC_ABI_VERSION (\d+)", header).group(1)) == ABI_VERSION
    assert module.info["abi_version"] == ABI_VERSION
    assert module._lib.sparsec_abi_version() == ABI_VERSION


def test_load_and_run_need_only_numpy_and_cffi(compiler, tmp_path):
    """A deployment without the compiler's packages: onnx, jinja2 and onnxruntime cannot be
    imported (None in sys.modules, as for an uninstalled package), yet `import sparsec`, load,
    run and `sparsec info` work, and compile says what it needs."""
    library = compiler.compile(mlp(), "generic").library
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = sparsec.load(library).run({"x": x})["y"]
    script = f"""
import json, sys
for name in ("onnx", "jinja2", "onnxruntime"):
    sys.modules[name] = None
import numpy as np
import sparsec
from sparsec.cli import main
module = sparsec.load({str(library)!r})
y = module.run({{"x": np.load({str(tmp_path / "x.npy")!r})}})["y"]
np.save({str(tmp_path / "y.npy")!r}, y)
try:
    sparsec.compile
    needs = ""
except ImportError as error:
    needs = str(error)
loaded = sorted(m for m in sys.modules if m.startswith(("sparsec.compiler", "sparsec.codegen")))
print(json.dumps({{"needs": needs, "loaded": loaded}}))
sys.argv = ["sparsec", "info", {str(library)!r}]
main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[0])
    assert report["loaded"] == []
    assert "onnx" in report["needs"] and "pip install sparsec" in report["needs"]
    assert "target generic" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
