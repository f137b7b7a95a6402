"""The import rules, checked on the source.

ffcli → {ffbuild, ffserve} → ffruntime → registry; ffbuild and ffserve never import each other; only
registry imports oras; no package has an import cycle among its own modules (type-only imports under
``if TYPE_CHECKING:`` aside).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.stages.codekey import PACKAGES, module_imports

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "ffcli": {"ffbuild", "ffserve", "ffruntime", "registry"},
    "ffbuild": {"ffruntime", "registry"},
    "ffserve": {"ffruntime", "registry"},
    "ffruntime": {"registry"},
    "registry": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved), with line numbers."""
    return [(name, line) for name, line, _ in module_imports(path, _module_name(path))]


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    bad = [
        f"{f.relative_to(ROOT)}:{line}: imports {name}"
        for f in _files(package)
        for name, line in _imports(f)
        if name.split(".")[0] in forbidden
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    modules = {_module_name(f): f for f in _files(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # A module importing its own parent package is how packages work, not a cycle.
        graph[name] = {
            m for m, _ in _imports(path) if m in modules and m != name and not name.startswith(m + ".")
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail(f"import cycle in {package}: " + " → ".join(cycle))


def test_only_registry_imports_oras() -> None:
    bad = [
        f"{f.relative_to(ROOT)}:{line}"
        for package in PACKAGES
        if package != "registry"
        for f in _files(package)
        for name, line in _imports(f)
        if name.split(".")[0] == "oras"
    ]
    assert not bad, "only registry/ may import oras: " + ", ".join(bad)


def test_no_utils_modules() -> None:
    bad = [
        str(f.relative_to(ROOT))
        for p in PACKAGES
        for f in _files(p)
        if f.stem in {"utils", "util", "helpers"}
    ]
    assert not bad, bad
