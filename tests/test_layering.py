"""Imports flow one way: lightning_modules uses nncf_ext, never the reverse (the CLI composes both)."""

import ast
from pathlib import Path


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nncf_ext_never_imports_lightning() -> None:
    offenders = []
    for path in Path("nncf_ext").rglob("*.py"):
        if path.name == "cli.py":
            continue
        bad = {
            m
            for m in imported_modules(path)
            if m.split(".")[0] in {"lightning_modules", "pytorch_lightning", "lightning"}
        }
        if bad:
            offenders.append(f"{path}: {sorted(bad)}")
    assert not offenders
