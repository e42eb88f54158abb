"""The whole-compile cache, its size bound and `sparsec cache` (sparsec/compile_cache.py)."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from sparsec import compile_cache
from sparsec.cli import main
from sparsec.errors import PortableKernelWarning
from sparsec.progress import Lines
from tests.graphs import mlp

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mlp_sparse.onnx"


def compile_twice(tmp_path, model, **options):
    cache = tmp_path / "cache"
    first = sparsec.compile_model(model, "generic", tmp_path / "a.so", cache_dir=cache, **options)
    second = sparsec.compile_model(model, "generic", tmp_path / "b.so", cache_dir=cache, **options)
    return first, second


def test_a_repeated_compile_comes_whole_from_the_cache(tmp_path, capsys, monkeypatch):
    from sparsec.codegen import build

    first = sparsec.compile_model(SAMPLE, "generic", tmp_path / "a.so",
                                  cache_dir=tmp_path / "cache")

    def no_front_end(*args, **kwargs):
        raise AssertionError("a whole-compile hit must not import the model")

    monkeypatch.setattr(sparsec.api, "_plans", no_front_end)
    monkeypatch.setattr(build, "_run", no_front_end)
    second = sparsec.compile_model(SAMPLE, "generic", tmp_path / "b.so",
                                   cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert not first.cached and second.cached
    assert first.library.read_bytes() == second.library.read_bytes()
    assert first.header.read_text().replace("a.h", "b.h") == second.header.read_text()
    assert json.dumps(first.info, sort_keys=True) == json.dumps(second.info, sort_keys=True)
    assert (tmp_path / "sparsec.h").exists()
    assert second.graph.to_text() == first.graph.to_text()  # made again when asked for
    progress = Lines()
    sparsec.compile_model(SAMPLE, "generic", tmp_path / "c.so", cache_dir=tmp_path / "cache",
                          progress=progress)
    assert capsys.readouterr().err.splitlines()[-1].endswith("(compile cached)")


def test_what_shapes_the_library_is_in_the_key(tmp_path):
    cache = tmp_path / "cache"
    base = sparsec.compile_model(SAMPLE, "generic", tmp_path / "a.so", cache_dir=cache)
    for n, options in enumerate([dict(force_pattern="dense"), dict(reorder=False),
                                 dict(dtype="int8", mixed_precision=False)]):
        result = sparsec.compile_model(SAMPLE, "generic", tmp_path / f"o{n}.so", cache_dir=cache,
                                       **options)
        assert not result.cached, options
    other = sparsec.compile_model(SAMPLE, "x86-avx2", tmp_path / "t.so", cache_dir=cache)
    assert not other.cached
    assert base.library.exists()


def test_external_data_is_part_of_the_key(tmp_path):
    """A model whose weights live in a .data file: editing that file is a new compile."""
    model = mlp(k=32, n=16, m=2, density=0.5)
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    cache = tmp_path / "cache"
    first = sparsec.compile_model(tmp_path / "m.onnx", "generic", tmp_path / "a.so",
                                  cache_dir=cache)
    data = bytearray((tmp_path / "m.onnx.data").read_bytes())
    weights = np.frombuffer(data, np.float32).copy()
    weights[weights != 0] *= 2
    (tmp_path / "m.onnx.data").write_bytes(weights.tobytes())
    second = sparsec.compile_model(tmp_path / "m.onnx", "generic", tmp_path / "b.so",
                                   cache_dir=cache)
    assert not second.cached
    x = {"x": np.ones((2, 32), np.float32)}
    assert not np.allclose(sparsec.load(first.library).run(x)["y"],
                           sparsec.load(second.library).run(x)["y"])


def test_a_cached_compile_still_warns_of_portable_layers(tmp_path):
    """No silent slow paths, from the cache either: x86-avx2 has no 4x4 kernel."""
    for name in ("a", "b"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PortableKernelWarning)
            result = sparsec.compile_model(SAMPLE, "x86-avx2", tmp_path / f"{name}.so",
                                           cache_dir=tmp_path / "cache", force_pattern="4x4")
        portable = [w for w in caught if w.category is PortableKernelWarning]
        assert portable and all("runs portable C on x86-avx2" in str(w.message)
                                for w in portable)
        # each names the caller's line, past sparsec's own frames
        assert {w.filename for w in portable} == {__file__}
    assert result.cached


def test_checked_or_dumped_compiles_run_in_full(tmp_path):
    for option in (dict(verify_each=True), dict(keep_source=tmp_path / "src"),
                   dict(use_cache=False)):
        _, second = compile_twice(tmp_path, SAMPLE, **option)
        assert not second.cached, option


def test_least_recently_used_entries_go_first(tmp_path):
    cache = tmp_path / "cache"
    (cache / "units").mkdir(parents=True)
    entries = [cache / "old.entry", cache / "units" / "middle.o.entry", cache / "new.entry"]
    for age, entry in zip((300, 200, 100), entries):
        entry.write_bytes(b"x" * 1000)
        os.utime(entry, (entry.stat().st_atime, entry.stat().st_mtime - age))
    (cache / "notes.txt").write_bytes(b"y" * 5000)  # not an entry: never counted or removed
    assert compile_cache.prune(cache, limit=2500) == 1000
    assert [e.exists() for e in entries] == [False, True, True]
    assert compile_cache.prune(cache, limit=0) == 2000 and (cache / "notes.txt").exists()


def test_a_restored_entry_counts_as_used(tmp_path):
    """Hits refresh an entry's time, so a library used every day outlives one built once."""
    cache = tmp_path / "cache"
    sparsec.compile_model(SAMPLE, "generic", tmp_path / "a.so", cache_dir=cache)
    entries = [*cache.glob("*.entry"), *(cache / "compiles").glob("*.entry")]
    assert len(entries) == 2  # the library (by its C source) and the whole compile's record
    for entry in entries:
        os.utime(entry, (0, 0))
    assert sparsec.compile_model(SAMPLE, "generic", tmp_path / "b.so", cache_dir=cache).cached
    assert all(entry.stat().st_mtime > 1e9 for entry in entries)


def test_the_size_bound_is_configurable(monkeypatch):
    monkeypatch.setenv("SPARSEC_CACHE_SIZE", "2G")
    assert compile_cache.limit_bytes() == 2 << 30
    monkeypatch.setenv("SPARSEC_CACHE_SIZE", "lots")
    with pytest.raises(sparsec.SparsecError, match="SPARSEC_CACHE_SIZE='lots'"):
        compile_cache.limit_bytes()


def test_cache_command_reports_and_clears(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", str(tmp_path / "a.so"),
                 "--cache-dir", str(cache)]) == 0
    assert main(["compile", str(SAMPLE), "--target", "generic", "-o", str(tmp_path / "b.so"),
                 "--cache-dir", str(cache)]) == 0
    assert "from the build cache" in capsys.readouterr().out.splitlines()[-1]
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["kinds"]["whole compiles (header, info, which library)"]["entries"] == 1
    assert usage["kinds"]["libraries by C source"]["entries"] == 1
    assert usage["bytes"] > 0
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert "whole compiles (header, info, which library)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.startswith("removed ")
    assert compile_cache.usage(cache)["bytes"] == 0


@pytest.mark.parametrize("location", ["/dev/zero", "../outside.data", "fifo"])
def test_a_hostile_external_data_location_is_not_read_for_the_key(location, tmp_path):
    """The key reads only regular files inside the model's folder: a model naming /dev/zero
    (or a FIFO) as its external data must not hang the cache lookup."""
    model = mlp(k=8, n=4, m=2, density=1.0)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    (tmp_path / "models").mkdir()
    if location == "fifo":
        os.mkfifo(tmp_path / "models" / "fifo")
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert compile_cache._model_digest(path)  # returns, and reads nothing it must not
    with pytest.raises(sparsec.SparsecError):
        sparsec.compile_model(path, "generic", tmp_path / "m.so", cache_dir=tmp_path / "c")
