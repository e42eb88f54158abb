import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from sparsec.cli import main
from sparsec.codegen import targets
from tests.conftest import TARGET_PARAMS
from tests.graphs import mlp, model

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mlp_sparse.onnx"


@pytest.fixture
def workdir(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    return tmp_path


def test_compile_run_info_round_trip(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "build/mlp.so",
                 "--report"]) == 0
    out = capsys.readouterr().out
    # every file it writes is named, the ABI header sparsec.h too (the session's cache may
    # have the compile already)
    assert "wrote build/mlp.so (target generic" in out
    assert "build/mlp.h and build/sparsec.h" in out
    assert sorted(p.name for p in Path("build").iterdir()) == ["mlp.h", "mlp.so", "sparsec.h"]
    assert "fc0/MatMul" in out and "1x16" in out, "the report names layers and patterns"
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    np.save("x.npy", x)
    assert main(["run", "build/mlp.so", "--input", "x=x.npy", "--out", "out.npz"]) == 0
    import onnxruntime as ort

    expected = ort.InferenceSession(str(SAMPLE)).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load("out.npz")["y"], expected, rtol=1e-4, atol=1e-5)
    assert main(["run", "build/mlp.so", "--input", "x=x.npy"]) == 0
    assert "y: float32[4, 10]" in capsys.readouterr().out
    assert main(["info", "build/mlp.so"]) == 0
    out = capsys.readouterr().out
    assert "target generic" in out and "'x': float32[4x64]" in out and "arena:" in out
    assert main(["info", "build/mlp.so", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["name"] == "x"


@pytest.mark.parametrize("target", [p for p in TARGET_PARAMS if p.values[0] == "arm-neon"])
def test_info_reads_a_library_this_host_cannot_load(target, workdir, capsys):
    """The model info is a section of the file: a cross-built AArch64 library's reads on an
    x86 host (it said "cannot open shared object file" when info came from loading it)."""
    assert main(["compile", str(SAMPLE), "--target", target, "-o", "arm.so"]) == 0
    capsys.readouterr()
    assert main(["info", "arm.so"]) == 0
    out = capsys.readouterr().out
    assert f"target {target}" in out and "'x': float32[4x64]" in out
    assert main(["info", "arm.so", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == target


def test_info_of_a_file_that_is_no_library_is_one_line(workdir, capsys):
    Path("notes.so").write_text("not a library")
    assert main(["info", "notes.so"]) != 0
    err = capsys.readouterr().err
    assert "notes.so is not a sparsec library" in err and "Traceback" not in err


def test_a_reader_that_goes_away_is_not_an_error(workdir):
    """`sparsec info x.so | head`: the pipe closes before sparsec writes. No `error: Broken
    pipe`, no traceback at exit; the status of a tool SIGPIPE ended."""
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "m.so"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "sparsec", "info", "m.so"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the child writes: its first write fails with EPIPE
    _, stderr = process.communicate(timeout=120)
    assert stderr == b"" and process.returncode == 141


def test_run_without_inputs_uses_seeded_random(workdir, capsys):
    main(["compile", str(SAMPLE), "--target", "generic", "-o", "m.so"])
    assert main(["run", "m.so", "--seed", "3"]) == 0
    assert "random float32[4x64] (seed 3)" in capsys.readouterr().out


def test_targets_lists_every_target(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("generic", "x86-avx2", "x86-avx512"):
        assert name in out
    assert "<- native" in out


@pytest.mark.parametrize("argv,message", [
    (["compile", "missing.onnx"], "model file not found"),
    (["compile", "bad.onnx"], "not a readable ONNX model"),
    (["compile", "dyn.onnx"], "--input-shape"),
    (["compile", "dyn.onnx", "--input-shape", "x=2"], "rank"),
    (["compile", "lstm.onnx"], "'rnn' (op LSTM)"),
    (["compile", "m.onnx", "--target", "vax"], "unknown target 'vax'"),
    (["compile", "m.onnx", "-o", "m.dll"], "must end in .so"),
    (["run", "missing.so"], "no compiled model"),
    (["run", "m.onnx"], "cannot load"),
    (["info", "m.onnx"], "not a sparsec library"),
    (["run", "ok.so", "--input", "x=nothere.npy"], "cannot read input 'x'"),
    (["run", "ok.so", "--input", "x"], "expected NAME=FILE.npy"),
    (["run", "ok.so", "--input", "z=x.npy"], "'z', not an input of this model"),
    (["compile", "m.onnx", "--target", "generic", "-o", "afile/m.so"], "afile"),
])
def test_user_errors_are_one_line_without_traceback(workdir, argv, message):
    Path("bad.onnx").write_bytes(b"garbage")
    onnx.save(mlp(), "m.onnx")
    onnx.save(model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["n", 2])],
                    [("y", ["n", 2])]), "dyn.onnx")
    lstm = model([helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="rnn", hidden_size=1)],
                 [("x", [1, 1, 1])], [("y", [1, 1, 1, 1])],
                 [("w", np.zeros((1, 4, 1), np.float32)), ("r", np.zeros((1, 4, 1), np.float32))])
    onnx.save(lstm, "lstm.onnx")
    main(["compile", "m.onnx", "--target", "generic", "-o", "ok.so"])
    Path("afile").write_text("a file where the output folder should be")
    np.save("x.npy", np.zeros((2, 8), np.float32))
    result = subprocess.run([sys.executable, "-m", "sparsec", *argv], capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("sparsec: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_profile_times_every_layer(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "native", "-o", "p.so", "--profile"]) == 0
    assert main(["run", "p.so", "--repeat", "3", "--profile", "--out", "o.npz"]) == 0
    out = capsys.readouterr().out
    assert "ms per run in" in out and "Dense" in out and "slowest layers" in out
    main(["compile", str(SAMPLE), "--target", "native", "-o", "plain.so"])
    assert main(["run", "plain.so", "--profile", "--out", "o.npz"]) == 1
    assert "compiled without profiling" in capsys.readouterr().err


@pytest.mark.skipif(not targets.runs_emulated(targets.TARGETS["x86-amx"]),
                    reason=f"x86-amx is {targets.execution_mode(targets.TARGETS['x86-amx'])} "
                           "here; its emulated build runs on CPUs with AVX-512 and no AMX")
def test_amx_emulated_build_says_so_everywhere(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "x86-amx", "--dtype", "int8", "--emulate",
                 "-o", "amx.so"]) == 0
    assert "AMX tile instructions emulated in scalar C" in capsys.readouterr().out
    assert main(["info", "amx.so"]) == 0
    out = capsys.readouterr().out
    assert "EMULATED:" in out and "amx_tile" not in out.split("\n")[0]
    assert main(["targets"]) == 0
    assert "x86-amx           runs here emulated (--emulate)" in capsys.readouterr().out
    assert main(["verify", str(SAMPLE), "--target", "x86-amx", "--quantize", "dynamic",
                 "--atol", "0.05"]) == 0
    assert "run emulated (AMX tile instructions emulated" in capsys.readouterr().out


def test_emulate_needs_a_target_with_an_emulation_build(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "generic", "--emulate"]) != 0
    assert "target generic has no emulation build; emulate applies to x86-amx" in \
        capsys.readouterr().err


def test_compile_warns_of_portable_matrix_products(workdir, capsys):
    """No silent slow path: x86-avx2 has no kernel for 4x4 blocks but the portable one, so
    with --pattern 4x4 every layer runs portable C; compile names each such layer and why on
    stderr, and --report marks it."""
    assert main(["compile", str(SAMPLE), "--target", "x86-avx2", "--pattern", "4x4",
                 "-o", "build/mlp.so", "--report"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("sparsec: warning:")]
    layers = [layer["node"] for layer in json.loads(
        subprocess.run([sys.executable, "-m", "sparsec", "info", "build/mlp.so", "--json"],
                       capture_output=True, text=True, check=True).stdout)["layers"]
        if layer["op"] == "Dense"]
    assert layers and len(warned) == len(layers)
    for name, line in zip(layers, warned):
        assert line.startswith(f"sparsec: warning: layer {name!r}: Dense runs portable C on "
                               "x86-avx2: no AVX2 Dense kernel for pattern 4x4 (they take: ")
    report = [line for line in captured.out.splitlines() if line.startswith(tuple(layers))]
    assert len(report) == len(layers)
    assert all("PORTABLE C: Dense runs portable C on x86-avx2" in line for line in report)


@pytest.mark.parametrize("dtype", ["float32", "int8", "bf16"])
def test_compile_is_quiet_where_every_product_has_a_simd_kernel(dtype, workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "x86-avx2", "--dtype", dtype,
                 "-o", "build/mlp.so", "--report"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "PORTABLE" not in captured.out


@pytest.mark.parametrize("dtype, share", [("int8", "2%"), ("bf16", "1%")])
def test_verify_compares_a_lowered_build_within_its_precision(dtype, share, workdir, capsys):
    """int8 and bf16 cannot equal float32 onnxruntime to 1e-5: verify holds them to a share of
    each output's range instead, and says which; an explicit --atol is used as given."""
    assert main(["verify", str(SAMPLE), "--target", "x86-avx2", "--dtype", dtype]) == 0
    assert f"-> ok ({dtype}: within {share} of the output's range" in capsys.readouterr().out
    assert main(["verify", str(SAMPLE), "--target", "x86-avx2", "--dtype", dtype,
                 "--atol", "1e-9", "--rtol", "0"]) == 1
    assert "MISMATCH (rtol 0, atol 1e-09)" in capsys.readouterr().out


def test_python_dtype_names_the_precision_as_the_cli_does():
    from sparsec.compiler.options import CompileOptions
    from sparsec.errors import SparsecError

    assert CompileOptions.from_keywords(dtype="int8").quantize == "dynamic"
    assert CompileOptions.from_keywords(dtype="bf16").quantize == "bf16"
    assert CompileOptions.from_keywords(dtype="float32").quantize is None
    assert CompileOptions.from_keywords(dtype="int8", quantize="dynamic").quantize == "dynamic"
    with pytest.raises(SparsecError, match="disagree"):
        CompileOptions.from_keywords(dtype="int8", quantize="bf16")
    with pytest.raises(SparsecError, match="dtype='fp16'; choose one of: float32, int8, bf16"):
        CompileOptions.from_keywords(dtype="fp16")


def test_compile_says_each_phase_with_verbose_and_nothing_with_quiet(workdir, capsys):
    fresh = ["--cache-dir", "fresh-cache"]  # not the session's: the first compile must run
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "a.so", "-v", *fresh]) == 0
    err = capsys.readouterr().err.splitlines()
    phases = [line.split()[1] for line in err if line.startswith("sparsec: ")]
    assert phases[:2] == ["cache", "import"] and "detect-sparsity" in phases
    assert "plan-memory" in phases
    assert err[-1].startswith("sparsec: C build ") and "C files compiled" in err[-1]
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "a.so", "-v", *fresh]) == 0
    assert capsys.readouterr().err.splitlines()[-1].endswith("(compile cached)")
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "b.so", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    # stderr not a terminal and no -v: no progress, just the result
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", "c.so"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("wrote c.so")


def test_compile_draws_a_progress_line_on_a_terminal(workdir):
    """stderr a terminal (a pseudo-terminal here): rich's live line names the phases."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "sparsec", "compile", str(SAMPLE), "--target",
                           "generic", "-o", "t.so", "--no-cache"], stderr=follower,
                          stdout=subprocess.PIPE, text=True, timeout=300)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pseudo-terminal is closed once everything is read
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert proc.returncode == 0 and proc.stdout.startswith("wrote t.so")
    text = drawn.decode(errors="replace")
    assert "sparsec: import" in text and "sparsec: C build" in text


@pytest.mark.parametrize("name", ["9lives", "has-dash", "sparsec", "x" * 65, "bad name"])
def test_a_name_that_is_no_c_identifier_is_refused(name, workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "generic", "--name", name]) == 1
    assert "must be a C identifier" in capsys.readouterr().err


def test_info_says_a_library_s_name(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "generic", "--name", "mlp", "-o",
                 "n.so"]) == 0
    capsys.readouterr()
    assert main(["info", "n.so"]) == 0
    assert "name: mlp (its API is mlp_create, mlp_run" in capsys.readouterr().out


def test_a_static_archive_reads_like_a_library_and_says_what_it_is(workdir, capsys):
    assert main(["compile", str(SAMPLE), "--target", "generic", "--emit", "static",
                 "-o", "s.a"]) == 0
    assert "wrote s.a (target generic" in capsys.readouterr().out
    assert main(["info", "s.a"]) == 0
    assert "s.a: sparsec" in capsys.readouterr().out
    assert main(["compile", str(SAMPLE), "--target", "generic", "--emit", "static",
                 "-o", "s.so"]) == 1
    assert "must end in .a (a static archive)" in capsys.readouterr().err
    import sparsec

    with pytest.raises(sparsec.LoadError, match="static archive"):
        sparsec.load("s.a")


def test_compile_without_output_writes_into_build(workdir, capsys):
    """Without -o the library, its header and sparsec.h go into ./build/, not among the
    user's own files."""
    assert main(["compile", str(SAMPLE), "--target", "generic"]) == 0
    assert sorted(p.name for p in workdir.iterdir()) == ["build"]
    assert sorted(p.name for p in (workdir / "build").iterdir()) == [
        "mlp_sparse.h", "mlp_sparse.so", "sparsec.h"]
    assert "wrote build/mlp_sparse.so" in capsys.readouterr().out
