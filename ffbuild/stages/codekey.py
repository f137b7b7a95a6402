"""The code a module runs: its import closure within ff's own packages, read from the source.

:func:`module_imports` lists what a source file imports (relative imports resolved, imports under
``if TYPE_CHECKING:`` left out, ``importlib.import_module("<constant>")`` counted);
:func:`import_closure` follows them from some root modules through ff's packages (each module's parent
packages included: importing a module runs their ``__init__``) and :func:`code_digest` hashes the
content of every file in it. A build stage's cache key holds that digest (:mod:`ffbuild.stages.tools`),
so a change to any code the stage runs is a cache miss; ``tests/test_layering.py`` reads imports the
same way. A module that is named or imported but not found is a :class:`CodeKeyError`, never skipped.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGES: tuple[str, ...] = ("ffcli", "ffbuild", "ffserve", "ffruntime", "registry")
"""ff's own top-level packages: the closure follows imports into these and no others."""

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds ff's packages (the checkout, or site-packages)."""


class CodeKeyError(Exception):
    """A module named for a cache key, or imported by one in its closure, has no source file."""


def module_file(name: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source of module ``name`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    for path in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def _type_checking_lines(node: ast.If) -> range | None:
    """The lines of the body of ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``), else None."""
    test = node.test
    named = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
    if not (named or "TYPE_CHECKING" in ast.unparse(test)):
        return None
    return range(node.body[0].lineno, (node.body[-1].end_lineno or node.body[-1].lineno) + 1)


def _dynamic_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("<constant>")``, or None for any other call."""
    func = node.func
    named = isinstance(func, ast.Attribute) and func.attr == "import_module"
    named = named or (isinstance(func, ast.Name) and func.id == "import_module")
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def module_imports(path: Path, name: str, *, type_only: bool = False) -> list[tuple[str, int, bool]]:
    """What the source file ``path`` of module ``name`` imports: (absolute module name, line, certain).

    ``certain`` is False for the ``pkg.name`` of ``from pkg import name``, which may name a module or
    only an attribute of ``pkg``. Imports under ``if TYPE_CHECKING:`` are left out unless ``type_only``.
    Remembered per process for the file as it is (size, mtime): every stage's closure shares the files.
    """
    st = path.stat()
    return list(_module_imports(path, name, type_only, st.st_size, st.st_mtime_ns))


@functools.cache
def _module_imports(
    path: Path, name: str, type_only: bool, size: int, mtime_ns: int
) -> tuple[tuple[str, int, bool], ...]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = name.split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[str, int, bool]] = []
    skip: list[range] = []
    for node in ast.walk(tree):  # one walk: the imports, and the TYPE_CHECKING blocks to drop after
        if isinstance(node, ast.If) and not type_only and (lines := _type_checking_lines(node)) is not None:
            skip.append(lines)
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, True) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno, True))
            found += [(f"{base}.{a.name}", node.lineno, False) for a in node.names]
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)) is not None:
            found.append((dynamic, node.lineno, True))
    return tuple(f for f in found if not any(f[1] in r for r in skip))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.cache
def import_closure(modules: tuple[str, ...], root: Path = SOURCE_ROOT) -> tuple[tuple[str, Path], ...]:
    """Every module of ff's packages that importing ``modules`` can run, with its file, sorted by name.

    Remembered per process (the source does not change under a running build).
    """
    found: dict[str, Path] = {}
    todo: list[tuple[str, str]] = []  # (module, who asked for it)
    for m in modules:
        if m.split(".")[0] not in PACKAGES:
            raise CodeKeyError(f"{m} is not a module of ff's packages ({', '.join(PACKAGES)})")
        todo += [(p, "the cache key") for p in _with_parents(m)]
    while todo:
        name, asker = todo.pop()
        if name in found:
            continue
        path = module_file(name, root)
        if path is None:
            raise CodeKeyError(f"module {name} (imported by {asker}) has no source under {root}")
        found[name] = path
        for imported, line, certain in module_imports(path, name):
            if imported.split(".")[0] not in PACKAGES or imported in found:
                continue
            if not certain and module_file(imported, root) is None:
                continue  # `from pkg import attribute`
            where = f"{path.relative_to(root).as_posix()}:{line}"
            todo += [(p, where) for p in _with_parents(imported) if p not in found]
    return tuple(sorted(found.items()))


def code_digest(modules: Iterable[str], root: Path = SOURCE_ROOT) -> str:
    """sha256 over the path and content of every file in the import closure of ``modules``."""
    h = hashlib.sha256()
    for _, path in import_closure(tuple(sorted(set(modules))), root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()
