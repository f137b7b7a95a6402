"""The import rules of DEVELOPERS.md, checked on the source: ffbuild → registry ← ffserve."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "registry": {"ffbuild", "ffserve"},
    "ffserve": {"ffbuild"},
    "ffbuild": set(),
}
HEAVY_FOR_SERVE = {"torch", "transformers", "tvm"}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    bad = [
        f"{f.relative_to(ROOT)}:{line}: imports {name}"
        for f in _files(package)
        for name, line in _imports(f)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_only_registry_imports_oras() -> None:
    bad = [
        f"{f.relative_to(ROOT)}:{line}"
        for package in ("ffbuild", "ffserve")
        for f in _files(package)
        for name, line in _imports(f)
        if name.split(".")[0] == "oras"
    ]
    assert not bad, "only registry/ may import oras: " + ", ".join(bad)


def test_no_utils_modules() -> None:
    bad = [
        str(f.relative_to(ROOT))
        for p in FORBIDDEN
        for f in _files(p)
        if f.stem in {"utils", "util", "helpers"}
    ]
    assert not bad, bad
