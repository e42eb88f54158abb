"""Fixtures of the codegen tests."""

from __future__ import annotations

import pytest

from sparsec.codegen import build


@pytest.fixture
def compiler_runs(monkeypatch) -> list:
    """The commands build runs (compiles and links), recorded in order and still run; a
    test clears the list where its count begins."""
    calls = []
    real = build._run

    def counting(argv, cwd):
        calls.append(argv)
        real(argv, cwd)

    monkeypatch.setattr(build, "_run", counting)
    return calls
