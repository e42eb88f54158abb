import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import sparsec
from sparsec.codegen import build, cache_files
from sparsec.errors import BuildError
from tests.codegen.entries import read_entry
from tests.graphs import mlp


def test_cache_hit_reuses_library(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = sparsec.compile(mlp(), "generic", tmp_path / "a.so", cache_dir=cache)
    assert len(list(cache.glob("*.entry"))) == 1

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cache hit must not run the compiler")

    monkeypatch.setattr(build, "_run", no_compiler)
    second = sparsec.compile(mlp(), "generic", tmp_path / "b.so", cache_dir=cache)
    assert first.read_bytes() == second.read_bytes()


def test_changed_weights_miss_the_cache(tmp_path):
    cache = tmp_path / "cache"
    sparsec.compile(mlp(seed=0), "generic", tmp_path / "a.so", cache_dir=cache)
    sparsec.compile(mlp(seed=1), "generic", tmp_path / "b.so", cache_dir=cache)
    assert len(list(cache.glob("*.entry"))) == 2


def test_compiler_error_shows_command_and_message(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "BASE_CFLAGS", build.BASE_CFLAGS + ("-fno-such-flag",))
    with pytest.raises(BuildError) as err:
        sparsec.compile(mlp(), "generic", tmp_path / "a.so", use_cache=False)
    assert "-fno-such-flag" in str(err.value) and "C compiler failed" in str(err.value)
    assert not (tmp_path / "a.so").exists()


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(BuildError, match="no C compiler found"):
        build.find_compiler()


def test_library_works_after_moving(tmp_path):
    import numpy as np

    built = sparsec.compile(mlp(), "generic", tmp_path / "a" / "m.so", use_cache=False)
    moved = tmp_path / "elsewhere" / "renamed.so"
    moved.parent.mkdir()
    os.replace(built, moved)
    (tmp_path / "a").rename(tmp_path / "gone")
    module = sparsec.load(moved)
    assert module.run({"x": np.ones((2, 8), np.float32)})["y"].shape == (2, 16)


def test_header_and_abi_header_are_written_beside_the_library(tmp_path):
    result = sparsec.compile_model(mlp(), "generic", tmp_path / "m.so", use_cache=False)
    assert result.header == tmp_path / "m.h"
    text = result.header.read_text()
    assert "#define SPARSEC_MODEL_INPUT0_NAME \"x\"" in text
    assert "sparsec_model_input0_shape[] = { 2, 8 }" in text
    assert (tmp_path / "sparsec.h").is_file()



@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty", "foreign file"])
def test_a_damaged_cache_entry_is_rebuilt_not_loaded(compiler_runs, damage, tmp_path):
    cache = tmp_path / "cache"
    good = sparsec.compile(mlp(), "generic", tmp_path / "a.so", cache_dir=cache).read_bytes()
    (entry,) = cache.glob("*.entry")
    blob = bytearray(entry.read_bytes())
    if damage == "flipped byte":
        blob[len(blob) // 2] ^= 0x40
    elif damage == "truncated":
        del blob[len(blob) // 2:]
    elif damage == "empty":
        blob.clear()
    else:
        blob[:] = good  # a bare library, as an older sparsec or another tool might leave
    entry.write_bytes(bytes(blob))
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    with pytest.warns(RuntimeWarning, match="corrupt"):
        rebuilt = sparsec.compile(mlp(), "generic", tmp_path / "b.so", cache_dir=cache)
    assert calls, "the damaged entry was used instead of rebuilt"
    assert rebuilt.read_bytes() == good
    assert read_entry(entry) == good  # healed for the next hit
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(sparsec.load(rebuilt).run({"x": x})["y"],
                                  sparsec.load(tmp_path / "a.so").run({"x": x})["y"])


CONCURRENT_COMPILE = """
import sys
import sparsec
from tests.graphs import mlp
sparsec.compile(mlp(k=64, n=96, m=4), "generic", sys.argv[1], cache_dir=sys.argv[2])
"""


def test_concurrent_compiles_share_one_cache_safely(tmp_path):
    """Processes racing to build the same model into one cache and one output: every one
    succeeds, each library is whole, and no temporary file is left behind."""
    cache = tmp_path / "cache"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    outputs = [tmp_path / f"m{i}.so" for i in range(4)] + [tmp_path / "shared.so"] * 2
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_COMPILE, str(out), str(cache)],
                              env=env, cwd=root, stderr=subprocess.PIPE, text=True)
             for out in outputs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    (entry,) = cache.glob("*.entry")
    library = read_entry(entry)
    assert library is not None
    for out in set(outputs):
        assert out.read_bytes() == library
    leftovers = [p.name for p in [*cache.rglob("*"), *tmp_path.iterdir()]
                 if p.name.endswith(".tmp")]
    assert not leftovers
    # the racers compiled the runtime at once too: one whole object entry per source
    runtime_entries = sorted(cache.glob("runtime/*.entry"))
    assert len(runtime_entries) == len(build.RUNTIME_SOURCES)
    assert all(read_entry(entry) for entry in runtime_entries)
    (prelude,) = cache.glob("prelude/*.entry")
    assert read_entry(prelude)
    x = np.arange(4 * 64, dtype=np.float32).reshape(4, 64) / 100
    wanted = np.maximum(x @ numpy_helper.to_array(mlp(k=64, n=96, m=4).graph.initializer[0])
                        + numpy_helper.to_array(mlp(k=64, n=96, m=4).graph.initializer[1]), 0)
    np.testing.assert_allclose(sparsec.load(tmp_path / "shared.so").run({"x": x})["y"], wanted,
                               rtol=1e-5, atol=1e-4)


def _runtime_compiles(calls: list) -> list[str]:
    """The runtime sources that the recorded compiler calls compiled."""
    return [Path(arg).name for argv in calls for arg in argv
            if Path(arg).name in build.RUNTIME_SOURCES]


def test_runtime_is_compiled_once_per_compiler_and_flags(compiler_runs, tmp_path):
    cache = tmp_path / "cache"
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    sparsec.compile(mlp(seed=0), "generic", tmp_path / "a.so", cache_dir=cache)
    assert sorted(_runtime_compiles(calls)) == sorted(build.RUNTIME_SOURCES)
    calls.clear()
    # another model, and another target: the runtime takes baseline flags, whatever the target
    sparsec.compile(mlp(seed=1), "generic", tmp_path / "b.so", cache_dir=cache)
    sparsec.compile(mlp(seed=1), "native", tmp_path / "c.so", cache_dir=cache)
    assert _runtime_compiles(calls) == []
    # flags that reach the runtime (sanitizers, profiling) are another set of objects
    sparsec.compile(mlp(seed=1), "generic", tmp_path / "d.so", cache_dir=cache, profile=True)
    assert sorted(_runtime_compiles(calls)) == sorted(build.RUNTIME_SOURCES)
    calls.clear()
    sparsec.compile(mlp(seed=2), "generic", tmp_path / "e.so", cache_dir=cache, profile=True)
    assert _runtime_compiles(calls) == []


def test_an_edited_runtime_header_recompiles_the_runtime(compiler_runs, tmp_path, monkeypatch):
    runtime = tmp_path / "runtime_c"
    shutil.copytree(build.runtime_dir(), runtime)
    monkeypatch.setattr(build, "runtime_dir", lambda: runtime)
    cache = tmp_path / "cache"
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    sparsec.compile(mlp(seed=0), "generic", tmp_path / "a.so", cache_dir=cache)
    calls.clear()
    with open(runtime / "sparsec_vmath_body.h", "a") as header:
        header.write("\n/* edited */\n")
    sparsec.compile(mlp(seed=1), "generic", tmp_path / "b.so", cache_dir=cache)
    assert sorted(_runtime_compiles(calls)) == sorted(build.RUNTIME_SOURCES)


@pytest.mark.parametrize("target", ["generic", "native"])
def test_library_from_cached_runtime_equals_an_uncached_build(target, tmp_path):
    """Linking cached runtime objects gives the very bytes of a build that compiles them
    beside the model: the same code, symbols, visibility and self-containment."""
    cache = tmp_path / "cache"
    sparsec.compile(mlp(seed=1), target, tmp_path / "warm.so", cache_dir=cache)
    source = tmp_path / "source"
    cached = sparsec.compile(mlp(), target, tmp_path / "cached.so", cache_dir=cache,
                             keep_source=source)
    resolved = build.targets.resolve(target)
    workdir = tmp_path / "uncached"
    shutil.copytree(source, workdir)
    for argv in build.compile_commands(build.find_compiler(resolved), resolved, workdir,
                                       workdir / "m.so"):
        build._run(argv, workdir)
    assert (workdir / "m.so").read_bytes() == cached.read_bytes()


def test_no_cache_writes_no_runtime_objects(tmp_path):
    cache = tmp_path / "cache"
    sparsec.compile(mlp(), "generic", tmp_path / "a.so", cache_dir=cache, use_cache=False)
    assert not cache.exists()


@pytest.mark.parametrize("kind", ["runtime", "prelude"])
def test_a_damaged_runtime_object_or_prelude_is_rebuilt_not_used(compiler_runs, kind, tmp_path):
    cache = tmp_path / "cache"
    sparsec.compile(mlp(seed=0), "generic", tmp_path / "a.so", cache_dir=cache)
    damaged = sorted(cache.glob(f"{kind}/*.entry"))[0]
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    damaged.write_bytes(bytes(blob))
    # a process keeps the preludes it has checked, and links its compiles to that copy: the
    # damaged entry is the next process's to find
    cache_files._VERIFIED.clear()
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    with pytest.warns(RuntimeWarning, match="corrupt") as caught:
        library = sparsec.compile(mlp(seed=1), "generic", tmp_path / "b.so", cache_dir=cache)
    assert {w.filename for w in caught if "corrupt" in str(w.message)} == {__file__}
    rebuilt = [argv for argv in calls if build.PRELUDE in argv and "c-header" in argv]
    if kind == "runtime":
        assert len(_runtime_compiles(calls)) == 1 and not rebuilt, "only the damaged object"
    else:
        assert not _runtime_compiles(calls) and len(rebuilt) == 1, "only the damaged prelude"
    assert read_entry(damaged) is not None  # healed for the next hit
    x = np.ones((2, 8), np.float32)
    assert sparsec.load(library).run({"x": x})["y"].shape == (2, 16)


def test_the_prelude_is_precompiled_once_and_used(compiler_runs, tmp_path):
    """model.c's opening includes are parsed once per target and flags; -Werror turns the
    warning that the compiler ignored the precompiled header (-Winvalid-pch) into a failure."""
    cache = tmp_path / "cache"
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    for seed in range(2):
        sparsec.compile(mlp(seed=seed), "native", tmp_path / f"{seed}.so", cache_dir=cache,
                        extra_cflags=("-Werror",))
    precompiles = [argv for argv in calls if "c-header" in argv]
    models = [argv for argv in calls if "model.c" in argv]
    assert len(precompiles) == 1 and len(models) == 2
    assert all(argv[argv.index("-include") + 1] == build.PRELUDE for argv in models)


def test_source_prelude_stops_at_the_first_line_of_c():
    source = ('/* generated */\n#ifdef P\n#define Q 1\n#endif\n#include "a.h"\n\n'
              '#include <b.h>\n/* tables */\n__asm__("x");\n#include <c.h>\n')
    assert build.source_prelude(source) == source[:source.index("__asm__")]
