"""Build-cache keys from code: each stage's key covers the import closure of its modules, read from the
source; a change to any module in it is a new key, and a missing module is an error."""

from __future__ import annotations

import ast
import shutil
import textwrap
from pathlib import Path

import pytest

from ffbuild.stages import tools
from ffbuild.stages.codekey import (
    SOURCE_ROOT,
    CodeKeyError,
    code_digest,
    import_closure,
    module_file,
    module_imports,
)


def _copy_tree(dst: Path) -> Path:
    """A copy of ff's packages to edit without touching the real source."""
    for package in ("ffbuild", "ffruntime", "registry", "ffserve"):
        shutil.copytree(SOURCE_ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_a_tokenizer_change_changes_verifys_key(tmp_path: Path) -> None:
    before = _copy_tree(tmp_path / "before")
    after = _copy_tree(tmp_path / "after")
    vocab = after / "ffruntime" / "llamacpp" / "vocab.py"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("def ", "def  ", 1), encoding="utf-8")
    assert tools.stage_code_digest("verify", before) == tools.stage_code_digest("verify", SOURCE_ROOT)
    assert tools.stage_code_digest("verify", after) != tools.stage_code_digest("verify", before)
    # a module verify never imports leaves its key alone
    edited = tools.stage_code_digest("verify", after)
    app = after / "ffserve" / "app.py"
    app.write_text(app.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert tools.stage_code_digest("verify", after) == edited
    names = {n for n, _ in import_closure(tools.STAGE_MODULES["verify"], after)}
    assert "ffruntime.llamacpp.vocab" in names and "ffserve.app" not in names


def test_the_key_of_a_build_holds_the_code_digest() -> None:
    assert tools.stage_tools("verify")["code"] == tools.stage_code_digest("verify")
    assert tools.stage_tools("convert")["code"] != tools.stage_tools("verify")["code"]


def test_a_missing_module_is_an_error(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path / "src")
    (root / "ffruntime" / "llamacpp" / "vocab.py").unlink()
    missing = r"ffruntime\.llamacpp\.vocab \(imported by [\w/]+\.py:\d+\)"
    with pytest.raises(CodeKeyError, match=missing):
        tools.stage_code_digest("verify", root)
    with pytest.raises(CodeKeyError, match=r"ffbuild\.stages\.nothing"):
        code_digest(["ffbuild.stages.nothing"], root)
    with pytest.raises(CodeKeyError, match="not a module of ff's packages"):
        code_digest(["numpy"], root)
    with pytest.raises(CodeKeyError, match="no modules are listed for build stage 'nope'"):
        tools.stage_code_digest("nope")


def _cache_key_stages() -> set[str]:
    """The stage names ffbuild passes to ``ctx.cache_key`` as literals."""
    names: set[str] = set()
    for path in (SOURCE_ROOT / "ffbuild").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "cache_key"
                and node.args
            ):
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
    return names


def test_every_cached_stage_has_its_modules() -> None:
    used = _cache_key_stages()
    assert {"convert", "quantize", "lora", "tvm_compile"} <= used
    assert used <= set(tools.STAGE_MODULES), "add these to ffbuild.stages.tools.STAGE_MODULES"
    for stage, modules in tools.STAGE_MODULES.items():
        names = {n for n, _ in import_closure(modules)}
        assert set(modules) <= names, stage
        assert tools.stage_code_digest(stage).startswith("sha256:")


def test_imports_are_read_from_the_source(tmp_path: Path) -> None:
    pkg = tmp_path / "ffbuild" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "ffbuild" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        textwrap.dedent(
            """\
            from __future__ import annotations
            import importlib
            from typing import TYPE_CHECKING
            from . import sibling
            from ..other import thing
            if TYPE_CHECKING:
                from ffruntime.hidden import X
            def later() -> None:
                import registry.store
                importlib.import_module("ffruntime.dynamic")
            """
        )
    )
    found = {(name, certain) for name, _, certain in module_imports(pkg / "mod.py", "ffbuild.sub.mod")}
    assert {
        ("ffbuild.sub", True),
        ("ffbuild.sub.sibling", False),
        ("ffbuild.other", True),
        ("ffbuild.other.thing", False),
        ("registry.store", True),
        ("ffruntime.dynamic", True),
    } <= found
    assert not any("hidden" in name for name, _ in found)
    assert module_file("ffbuild.sub", tmp_path) == pkg / "__init__.py"
    assert module_file("ffbuild.sub.mod", tmp_path) == pkg / "mod.py"
    assert module_file("ffbuild.sub.absent", tmp_path) is None


def test_the_closure_is_computed_once_per_process() -> None:
    modules = tools.STAGE_MODULES["verify"]
    assert import_closure(modules) is import_closure(modules)
