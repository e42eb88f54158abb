"""Host profiles (`sparsec calibrate`, codegen/profiles.py): measured costs are saved, found
again only for the same target on the same CPU, refused with a warning when damaged, and do
change which kernels compile chooses (a profile that makes dense nearly free turns a 90 %
sparse layer dense; --no-host-profile restores the table's choice)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsec.api import compile_model
from sparsec.calibrate import calibrate, layer
from sparsec.cli import main
from sparsec.codegen import profiles, targets
from sparsec.errors import SparsecError


@pytest.fixture(autouse=True)
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEC_PROFILE_DIR", str(tmp_path / "profiles"))
    return tmp_path / "profiles"


def sparse_layer():
    rng = np.random.default_rng(3)
    keep = np.kron(rng.random((64, 64)) < 0.1, np.ones((4, 1)))
    return layer((rng.standard_normal((256, 64)) * keep).astype(np.float32), 16)


def test_calibrate_saves_what_load_finds(profile_dir):
    generic = targets.resolve("generic")
    path, measured = calibrate("generic", quick=True)
    assert path.parent == profile_dir and path.exists()
    assert ("float32", "dense") in measured and ("float32", "4x1") in measured
    assert all(ns > 0 for ns in measured.values())
    assert profiles.load(generic) == (measured, path)


def test_a_profile_changes_the_kernels_compile_chooses(tmp_path):
    generic = targets.resolve("generic")
    table = compile_model(sparse_layer(), "generic", tmp_path / "a.so", use_cache=False)
    assert table.info["layers"][0]["pattern"] == "4x1" and table.host_profile is None
    profiles.save(generic, {("float32", "dense"): 1e-9, ("float32", "4x1"): 100.0})
    measured = compile_model(sparse_layer(), "generic", tmp_path / "b.so", use_cache=False)
    assert measured.info["layers"][0]["pattern"] == "dense"
    assert measured.host_profile == profiles.path_for(generic)
    ignored = compile_model(sparse_layer(), "generic", tmp_path / "c.so", use_cache=False,
                            host_profile=False)
    assert ignored.info["layers"][0]["pattern"] == "4x1" and ignored.host_profile is None


def test_a_profile_of_another_cpu_or_target_is_not_used():
    generic = targets.resolve("generic")
    path = profiles.save(generic, {("float32", "dense"): 1e-9})
    document = json.loads(path.read_text())
    for changed in ({"cpu": "0123456789abcdef"}, {"target": "x86-avx2"}, {"version": 0}):
        path.write_text(json.dumps(dict(document, **changed)))
        with pytest.warns(profiles.ProfileWarning, match="not one this sparsec can use"):
            assert profiles.load(generic) == ({}, None)
    other_cpu = path.with_name(f"generic-{'f' * 16}.json")  # as another machine names it
    path.rename(other_cpu)
    assert profiles.load(generic) == ({}, None)


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 1}',
                                  '{"version": 1, "target": "generic", "cpu": "%s", '
                                  '"costs": {"float32": {"dense": -1}}}',
                                  '{"version": 1, "target": "generic", "cpu": "%s", '
                                  '"costs": {"float32": {"dense": "NaN"}}}'])
def test_a_damaged_profile_warns_and_keeps_the_table(text, profile_dir):
    generic = targets.resolve("generic")
    profile_dir.mkdir()
    profiles.path_for(generic).write_text(text.replace("%s", profiles.cpu_signature()))
    with pytest.warns(profiles.ProfileWarning, match="sparsec calibrate"):
        assert profiles.load(generic) == ({}, None)


def test_a_target_this_host_cannot_run_is_refused():
    foreign = next((t for t in targets.TARGETS.values() if not targets.can_execute(t)), None)
    if foreign is None:
        pytest.skip("this host runs every target natively")
    with pytest.raises(SparsecError, match="does not run natively"):
        calibrate(foreign.name, quick=True)
    assert profiles.load(foreign) == ({}, None)


def test_the_cli_reports_and_compile_says_which_costs_it_used(tmp_path, capsys):
    assert main(["calibrate", "--target", "generic", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "float32  dense" in out and "the table's" in out and "wrote " in out
    model = tmp_path / "layer.onnx"
    model.write_bytes(sparse_layer().SerializeToString())
    assert main(["compile", str(model), "--target", "generic", "-o", str(tmp_path / "l.so"),
                 "--report", "--no-cache"]) == 0
    assert "kernel costs: measured on this host" in capsys.readouterr().out
    assert main(["compile", str(model), "--target", "generic", "-o", str(tmp_path / "l.so"),
                 "--report", "--no-cache", "--no-host-profile"]) == 0
    assert "kernel costs: the kernel table's" in capsys.readouterr().out
