"""The import rules, checked on the source.

ffcli → {ffbuild, ffserve} → ffruntime → registry; ffbuild and ffserve never import each other; only
registry imports oras; no package has an import cycle among its own modules (type-only imports under
``if TYPE_CHECKING:`` aside); the build's stages (``ffbuild/stages/``) never import the pipeline that
runs them (``ffbuild/*.py``), type-only imports included, but for the plan's types and the cache.
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


def _imports(path: Path, *, type_only: bool = False) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved), with line numbers;
    ``type_only``: with the imports under ``if TYPE_CHECKING:``."""
    return [(name, line) for name, line, _ in module_imports(path, _module_name(path), type_only=type_only)]


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


STAGE_FOUNDATIONS = {"ffbuild", "ffbuild.plan", "ffbuild.cache"}
"""What ``ffbuild/stages/`` may import from the rest of ffbuild: the package itself (its version), the
plan's types and the build cache. They import nothing of ffbuild (checked below), so no stage reaches
the pipeline (``ffbuild.build``, the planner, ...) through them either."""


def _module_of(name: str) -> str:
    """The module an imported name lies in: ``ffbuild.plan.Variant`` → ``ffbuild.plan``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts[:end])
    return name


def test_stages_do_not_import_the_pipeline() -> None:
    bad = sorted(
        {
            f"{f.relative_to(ROOT)}:{line}: imports {module}"
            for f in _files("ffbuild/stages")
            for name, line in _imports(f, type_only=True)
            if name.split(".")[0] == "ffbuild"
            and not (module := _module_of(name)).startswith("ffbuild.stages")
            and module not in STAGE_FOUNDATIONS
        }
    )
    assert not bad, "ffbuild/stages/ imports the pipeline above it:\n" + "\n".join(bad)


def test_what_the_stages_import_of_ffbuild_imports_nothing_of_ffbuild() -> None:
    bad = [
        f"{module}:{line}: imports {name}"
        for module in sorted(STAGE_FOUNDATIONS - {"ffbuild"})
        for name, line in _imports(ROOT.joinpath(*module.split(".")).with_suffix(".py"), type_only=True)
        if name.split(".")[0] == "ffbuild" and _module_of(name) != "ffbuild"
    ]
    init = _imports(ROOT / "ffbuild" / "__init__.py", type_only=True)
    bad += [f"ffbuild/__init__.py:{line}: imports {n}" for n, line in init if n.startswith("ffbuild")]
    assert not bad, "\n".join(bad)
