import os

import pytest

import sparsec
from sparsec.codegen import build
from sparsec.errors import BuildError
from tests.graphs import mlp


def test_cache_hit_reuses_library(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = sparsec.compile(mlp(), "generic", tmp_path / "a.so", cache_dir=cache)
    assert len(list(cache.glob("*.so"))) == 1

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cache hit must not run the compiler")

    monkeypatch.setattr(build, "_run", no_compiler)
    second = sparsec.compile(mlp(), "generic", tmp_path / "b.so", cache_dir=cache)
    assert first.read_bytes() == second.read_bytes()


def test_changed_weights_miss_the_cache(tmp_path):
    cache = tmp_path / "cache"
    sparsec.compile(mlp(seed=0), "generic", tmp_path / "a.so", cache_dir=cache)
    sparsec.compile(mlp(seed=1), "generic", tmp_path / "b.so", cache_dir=cache)
    assert len(list(cache.glob("*.so"))) == 2


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
