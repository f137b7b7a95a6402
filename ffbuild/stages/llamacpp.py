"""llama.cpp as the stages use it: importing the binding, capturing its log, and its CPU buffer choice.

- :func:`binding` imports ``llama_cpp`` or raises :class:`MissingDependencyError` naming the extra.
- :func:`captured_log` collects llama.cpp's log lines during a call, so a failure can say *why*
  (llama.cpp reports most errors only in its log and returns a null pointer or a non-zero code).
- :func:`use_extra_buffers`: llama.cpp repacks weights into "extra" CPU buffer types (AMX tiles,
  interleaved layouts). On CPUs with AMX the AMX matmul segfaults in the VMs these builds run in (seen
  with llama-cpp-python 0.3.36 on Sapphire Rapids under Firecracker, any quantized model, any batch > 1
  token), which would kill the build process. We therefore load without extra buffers when the CPU
  reports ``amx_int8``; ``FF_LLAMA_EXTRA_BUFFERS=1`` / ``=0`` overrides the choice.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from ffbuild.stages.errors import MissingDependencyError


def binding() -> ModuleType:
    """The ``llama_cpp`` module (llama-cpp-python)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingDependencyError("llama-cpp-python", "gguf", "Running llama.cpp") from e
    return llama_cpp


@contextlib.contextmanager
def captured_log(min_level: int = 2) -> Iterator[list[str]]:
    """Collect llama.cpp log lines at ``min_level`` or above (2 warn, 3 error) while the block runs."""
    llama_cpp = binding()
    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level >= min_level and level != 5:
            lines.append(text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def log_tail(lines: list[str], n: int = 5) -> str:
    """The last few non-empty log lines, for an error message."""
    kept = [line for line in lines if line.strip()][-n:]
    return "; ".join(kept) if kept else "llama.cpp logged no reason"


@functools.cache
def _cpu_has_amx() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_int8" in line for line in text.splitlines())


def use_extra_buffers() -> bool:
    """Whether to let llama.cpp repack weights into extra CPU buffer types (see the module doc)."""
    env = os.environ.get("FF_LLAMA_EXTRA_BUFFERS")
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1"
    return not _cpu_has_amx()


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
