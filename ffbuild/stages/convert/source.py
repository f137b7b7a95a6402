"""Where llama.cpp's own converters are: the llama-cpp-python source distribution ``.ci/setup`` keeps.

The converters (``convert_hf_to_gguf.py`` with its ``conversion/`` package, ``convert_lora_to_gguf.py``)
and the ``gguf-py`` they import ship in the llama-cpp-python sdist under ``vendor/llama.cpp``, of
exactly the llama.cpp the runtime loads. ``.ci/setup`` downloads that sdist once (``pip download
--no-deps --no-binary :all: llama-cpp-python==<version>``) and unpacks it to
``$XDG_CACHE_HOME/ferrousforge/llama_cpp_python-<version>`` (``~/.cache`` when unset); nothing is
downloaded at build time. ``FF_LLAMA_CPP_SOURCE`` names another unpacked sdist.

:func:`llama_cpp_source` finds it (the version of the installed llama-cpp-python, else the pinned one)
and :attr:`LlamaCppSource.digest` covers every file the converters run, so a build-cache key holding it
changes when the converter does. ``bench/build.py`` builds its baseline tools from the same folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ffbuild.stages.errors import ConvertError

PINNED_VERSION: Final = "0.3.36"
"""The llama-cpp-python version pyproject.toml and .ci/setup pin (used when none is installed)."""
ENV_VAR: Final = "FF_LLAMA_CPP_SOURCE"
CONVERT_SCRIPT: Final = "convert_hf_to_gguf.py"
LORA_SCRIPT: Final = "convert_lora_to_gguf.py"


class ConverterMissingError(ConvertError):
    """The llama-cpp-python source (and so llama.cpp's converter) is not on this machine."""


def installed_version() -> str:
    """The installed llama-cpp-python's version (the runtime's), or the pinned one."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return PINNED_VERSION


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferrousforge"


def default_location(version: str) -> Path:
    """Where ``.ci/setup`` unpacks the sdist of ``version``."""
    return cache_root() / f"llama_cpp_python-{version}"


def setup_command(version: str) -> str:
    """The commands that put the sdist where :func:`llama_cpp_source` looks (what .ci/setup runs)."""
    dest = default_location(version)
    return (
        f"pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d {dest.parent / 'sdist'} "
        f"&& tar xzf {dest.parent / 'sdist'}/llama_cpp_python-{version}.tar.gz -C {dest.parent}"
    )


@dataclass(frozen=True)
class LlamaCppSource:
    """An unpacked llama-cpp-python sdist: ``root`` holds ``vendor/llama.cpp``."""

    root: Path
    version: str

    @property
    def llama_cpp(self) -> Path:
        return self.root / "vendor" / "llama.cpp"

    @property
    def gguf_py(self) -> Path:
        return self.llama_cpp / "gguf-py"

    def script(self, name: str) -> Path:
        return self.llama_cpp / name

    @property
    def digest(self) -> str:
        """sha256 over every file the converters run (scripts, ``conversion/``, ``gguf-py/gguf``)."""
        return _digest(self.llama_cpp)


@functools.cache
def _digest(llama_cpp: Path) -> str:
    files = [llama_cpp / CONVERT_SCRIPT, llama_cpp / LORA_SCRIPT]
    files += sorted((llama_cpp / "conversion").rglob("*.py"))
    files += sorted((llama_cpp / "gguf-py" / "gguf").rglob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(llama_cpp).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def llama_cpp_source(version: str | None = None) -> LlamaCppSource:
    """The unpacked sdist of ``version`` (default: the installed llama-cpp-python's), or
    :class:`ConverterMissingError` naming the setup step that provides it."""
    version = version or installed_version()
    named = os.environ.get(ENV_VAR)
    root = Path(named) if named else default_location(version)
    src = LlamaCppSource(root, version)
    if not (src.script(CONVERT_SCRIPT).is_file() and (src.gguf_py / "gguf").is_dir()):
        where = f"{ENV_VAR}={named}" if named else str(root)
        raise ConverterMissingError(
            f"llama.cpp's converter (the llama-cpp-python {version} source) is not at {where}: run .ci/setup "
            "(its step 'llama.cpp converters: the llama-cpp-python sdist'), or by hand: "
            + setup_command(version)
        )
    return src
