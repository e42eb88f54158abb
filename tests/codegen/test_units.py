"""A model built as several translation units (codegen/units.py): the same outputs as one file,
compiled in parallel, and each unit's object cached, so that a change to one layer's weights
recompiles model.c and that layer's unit only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import sparsec
from sparsec.codegen import build, emit, jobs, units
from sparsec.errors import BuildError
from tests.codegen.entries import read_entry
from tests.conftest import HOST_TARGETS, run_onnxruntime
from tests.graphs import model
from tests.runtime_c.test_sanitizers import tiny_bert_module

WIDTH = 16
LAYERS = 12
PART_CALLS = 4  # 12 one-call layers: three parts, so three units when each part is one


def split_every_part(monkeypatch) -> None:
    """Every run-function part of PART_CALLS calls in a translation unit of its own."""
    monkeypatch.setattr(emit, "PART_CALLS", PART_CALLS)
    monkeypatch.setattr(units, "UNIT_BYTES", 1)


def dense_chain(scaled_layer: int | None = None, output: str = "y"):
    """LAYERS Dense layers (MatMul + Add + Relu, fused into one call each) of dense weights;
    `scaled_layer`'s weight doubled: new values, nothing else about the model changes."""
    rng = np.random.default_rng(0)
    nodes, initializers, current = [], [], "x"
    for layer in range(LAYERS):
        weight = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 4
        if layer == scaled_layer:
            weight *= 2
        initializers += [(f"w{layer}", weight),
                         (f"b{layer}", rng.standard_normal(WIDTH).astype(np.float32))]
        out = output if layer == LAYERS - 1 else f"h{layer}"
        nodes += [helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]),
                  helper.make_node("Add", [f"m{layer}", f"b{layer}"], [f"a{layer}"]),
                  helper.make_node("Relu", [f"a{layer}"], [out])]
        current = out
    return model(nodes, [("x", [2, WIDTH])], [(output, [2, WIDTH])], initializers)



def _compiled_sources(calls: list) -> list[str]:
    """The model's sources (model.c, unit-N.c) that the recorded compiler calls compiled."""
    return sorted(argv[argv.index("-c") + 1] for argv in calls
                  if "-c" in argv and argv[argv.index("-c") + 1] in build.model_sources(99))


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_a_model_in_units_computes_what_it_does_in_one_file(target, tmp_path, monkeypatch):
    """tiny BERT with two sequence buckets (two plans, so units hold parts of both), as one
    file and with every part in a unit of its own: the same outputs, bit for bit (the C of
    each kernel is the same, only where it lies changes)."""
    bert = tiny_bert_module()
    onnx_model = bert.tiny_bert(3, hidden=32, num_heads=2, ffn=64, layers=2, vocab=64, seq=16,
                                dynamic=True)
    shapes = {"input_ids": (1, [8, 16]), "attention_mask": (1, [8, 16])}
    monkeypatch.setattr(units, "UNIT_BYTES", 10**12)
    whole = sparsec.compile_model(onnx_model, target, tmp_path / "whole.so", use_cache=False,
                                  input_shapes=shapes, keep_source=tmp_path / "whole")
    split_every_part(monkeypatch)
    split = sparsec.compile_model(onnx_model, target, tmp_path / "split.so", use_cache=False,
                                  input_shapes=shapes, keep_source=tmp_path / "split")
    assert not list((tmp_path / "whole").glob("unit-*.c"))
    assert len(list((tmp_path / "split").glob("unit-*.c"))) > 4
    modules = [sparsec.load(result.library) for result in (whole, split)]
    for length in (5, 8, 16):
        feeds = {name: value[:, :length]
                 for name, value in bert.tiny_bert_inputs(1, vocab=64, seq=16, padded=2).items()}
        expected, got = (module.run(feeds)["last_hidden_state"] for module in modules)
        np.testing.assert_array_equal(got, expected)


def test_profiled_layers_keep_their_plan_index_across_units(compiler, monkeypatch):
    split_every_part(monkeypatch)
    module = compiler.load(dense_chain(), "native", profile=True)
    x = np.ones((2, WIDTH), np.float32)
    for _ in range(200):  # times accumulate: one run may stay under a coarse clock's tick
        module.run({"x": x})
    layers = module.profile()
    assert [layer["weight"] for layer in layers] == [f"w{n}" for n in range(LAYERS)]
    assert all(layer["ms"] > 0 for layer in layers)


def test_a_one_layer_change_recompiles_that_layers_unit_only(compiler_runs, tmp_path, monkeypatch):
    split_every_part(monkeypatch)
    cache = tmp_path / "cache"
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    sparsec.compile(dense_chain(), "generic", tmp_path / "a.so", cache_dir=cache,
                    keep_source=tmp_path / "a")
    assert _compiled_sources(calls) == ["model.c", "unit-0.c", "unit-1.c", "unit-2.c"]
    calls.clear()
    changed = dense_chain(scaled_layer=PART_CALLS + 1)  # the second part's second layer
    library = sparsec.compile(changed, "generic", tmp_path / "b.so", cache_dir=cache,
                              keep_source=tmp_path / "b")
    assert _compiled_sources(calls) == ["model.c", "unit-1.c"]
    for name in ("unit-0.c", "unit-2.c"):  # what the cache's objects were compiled from
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    x = np.random.default_rng(1).standard_normal((2, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(sparsec.load(library).run({"x": x})["y"],
                               run_onnxruntime(changed, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_units_from_the_cache_link_the_library_an_uncached_build_makes(tmp_path, monkeypatch):
    """Objects from the unit cache (and the precompiled prelude) give the very bytes that
    build.compile_commands, which compiles every unit from source, gives."""
    split_every_part(monkeypatch)
    cache = tmp_path / "cache"
    sparsec.compile(dense_chain(), "native", tmp_path / "warm.so", cache_dir=cache)
    source = tmp_path / "source"
    cached = sparsec.compile(dense_chain(output="z"), "native", tmp_path / "cached.so",
                             cache_dir=cache, keep_source=source)
    workdir = tmp_path / "uncached"
    shutil.copytree(source, workdir)
    resolved = build.targets.resolve("native")
    commands = build.compile_commands(build.find_compiler(resolved), resolved, workdir,
                                      workdir / "m.so")
    assert [argv[argv.index("-c") + 1] for argv in commands if "-c" in argv][-4:] == [
        "model.c", "unit-0.c", "unit-1.c", "unit-2.c"]
    for argv in commands:
        build._run(argv, workdir)
    assert (workdir / "m.so").read_bytes() == cached.read_bytes()


def test_a_damaged_unit_object_is_rebuilt_not_linked(compiler_runs, tmp_path, monkeypatch):
    split_every_part(monkeypatch)
    cache = tmp_path / "cache"
    sparsec.compile(dense_chain(), "generic", tmp_path / "a.so", cache_dir=cache)
    entries = sorted(cache.glob("units/*.entry"))
    assert len(entries) == 3
    for entry in entries:
        blob = bytearray(entry.read_bytes())
        blob[len(blob) // 2] ^= 0x40
        entry.write_bytes(bytes(blob))
    compiler_runs.clear()  # counted from here on
    calls = compiler_runs
    # Another output name: a new model.c (the model info), the very same units, all damaged
    renamed = dense_chain(output="z")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        library = sparsec.compile(renamed, "generic", tmp_path / "b.so", cache_dir=cache)
    assert _compiled_sources(calls) == ["model.c", "unit-0.c", "unit-1.c", "unit-2.c"]
    assert sorted(cache.glob("units/*.entry")) == entries
    assert all(read_entry(entry) is not None for entry in entries)  # healed
    x = np.ones((2, WIDTH), np.float32)
    np.testing.assert_allclose(sparsec.load(library).run({"x": x})["z"],
                               run_onnxruntime(renamed, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_unit_that_fails_to_compile_fails_the_build_naming_it(tmp_path, monkeypatch):
    split_every_part(monkeypatch)
    render = units.render

    def planted(*args):
        model_c, sources = render(*args)
        return model_c, [*sources[:1], sources[1] + "\n#error planted\n", *sources[2:]]

    monkeypatch.setattr(units, "render", planted)
    with pytest.raises(BuildError, match=r"(?s)unit-1\.c.*planted"):
        sparsec.compile(dense_chain(), "generic", tmp_path / "a.so", use_cache=False)
    assert not (tmp_path / "a.so").exists()


@pytest.mark.parametrize("cpus", [1, 2])
def test_compiles_run_as_many_at_once_as_the_process_has_cpus(cpus, monkeypatch, tmp_path):
    running, most = 0, 0
    changed = threading.Condition()

    def waiting(argv, cwd):
        """A compile that lasts until `cpus` of them run at once (or 10 s have passed, so a
        build that runs them one by one fails the count, not the test's time)."""
        nonlocal running, most
        with changed:
            running += 1
            most = max(most, running)
            changed.notify_all()
            changed.wait_for(lambda: running >= cpus, timeout=10)
        with changed:
            running -= 1

    monkeypatch.setattr(jobs, "usable_cpus", lambda: cpus)
    jobs.run_parallel([["cc", str(n)] for n in range(6)], Path(tmp_path), waiting)
    assert most == cpus


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cpus_are_the_affinity_masks_not_the_machines():
    """Pinned to one CPU (as taskset or a container's cpuset does), a build runs one compiler at
    a time however many CPUs the machine has."""
    pinned = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})"
         "; from sparsec.codegen import jobs; print(jobs.usable_cpus())"],
        capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"
