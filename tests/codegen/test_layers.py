"""Layers point one way: compiler/ knows nothing of codegen/ or the public face."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_compiler_does_not_import_codegen_or_the_api():
    bad = {m for m in imports("compiler")
           if m.startswith(("sparsec.codegen", "sparsec.api", "sparsec.module", "sparsec.cli"))
           or m in ("codegen", "compiler")}
    assert not bad


def test_codegen_does_not_import_the_api():
    bad = {m for m in imports("codegen")
           if m.startswith(("sparsec.api", "sparsec.module", "sparsec.cli"))}
    assert not bad


def test_no_top_level_compiler_or_codegen_package():
    for folder in ("sparsec", "compiler", "codegen", "tests"):
        assert not {m for m in imports(folder) if m.split(".")[0] in ("compiler", "codegen")}
