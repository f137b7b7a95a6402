"""llama.cpp as every part of ff drives it: the binding, its log, and the model and context parameters.

The verify stage (:mod:`ffruntime.llamacpp.eval`), ``ff run`` and the server's runtime
(:mod:`ffruntime.llamacpp`) all load models through :func:`model_params` and :func:`context_params`,
so what verify measures runs on the same kernels as what is served. Nothing here patches
``llama_cpp``: parameters are built and passed explicitly.

- :func:`binding` imports ``llama_cpp`` or raises :class:`BackendUnavailable` naming the extra.
- :func:`captured_log` collects llama.cpp's log lines during a call, so a failure can say *why*
  (llama.cpp reports most errors only in its log and returns a null pointer or a non-zero code).
- :func:`extra_buffers_safe`: llama.cpp repacks weights into "extra" CPU buffer types (AMX tiles,
  interleaved layouts for Q4_0/IQ4_NL/Q4_K). A library that compiled ggml's AMX kernels with GCC < 13
  crashes on AMX CPUs on every multi-token batch (GCC 12's ``_tile_loadconfig`` drops the tile
  config's row stores; ollama/ollama#17244). Only such a library on such a CPU loads without extra
  buffers, with a warning saying how to rebuild. ``FF_LLAMA_EXTRA_BUFFERS=1`` / ``=0`` overrides.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ffruntime.errors import BackendUnavailable
from ffruntime.settings import LoadSettings

log = logging.getLogger("ffruntime.llamacpp")


def binding() -> ModuleType:
    """The ``llama_cpp`` module (llama-cpp-python), with llama.cpp's log sent to :data:`log`.

    ``OMP_WAIT_POLICY`` is left as the environment has it (unset: libgomp spins a while at a barrier, then
    sleeps, as in llama-server): libgomp reads it once, so it cannot follow the load; the thread count of
    each decode does (:mod:`ffruntime.llamacpp.threads`, docs/serving.md)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise BackendUnavailable.missing("llama-cpp-python", "gguf", "Running llama.cpp") from e
    _quiet_log(llama_cpp)
    return llama_cpp


_LOG_CALLBACK: list[Any] = []  # the installed callback, kept alive while llama.cpp may call it
_COLLECTING = threading.local()  # per thread: a stack of (min_level, lines) of open captured_log blocks


def _quiet_log(llama_cpp: ModuleType) -> None:
    """llama.cpp's warnings and errors go to the ``ffruntime.llamacpp`` logger (debug level, as the
    callers report failures themselves), or to the innermost :func:`captured_log` block open on the
    thread that logs; its info and debug lines (per batch, per KV copy) nowhere. The one callback is
    installed once and never replaced: threads that call llama.cpp side by side (the verify stage, the
    server's engine and its helpers) each collect their own lines, and no thread can free a callback
    that llama.cpp is calling on another."""
    if _LOG_CALLBACK:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        stack: list[tuple[int, list[str]]] | None = getattr(_COLLECTING, "stack", None)
        if stack:
            min_level, lines = stack[-1]
            if level >= min_level and level != 5:
                lines.append(text.decode("utf-8", "replace").rstrip())
        elif level in (2, 3):
            log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    _LOG_CALLBACK.append(_forward)
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))


@contextlib.contextmanager
def captured_log(min_level: int = 2) -> Iterator[list[str]]:
    """Collect the llama.cpp log lines this thread logs at ``min_level`` or above (2 warn, 3 error) while
    the block runs."""
    binding()
    lines: list[str] = []
    stack: list[tuple[int, list[str]]] = _COLLECTING.__dict__.setdefault("stack", [])
    stack.append((min_level, lines))
    try:
        yield lines
    finally:
        stack.pop()


def log_tail(lines: list[str], n: int = 5) -> str:
    """The last few non-empty log lines, for an error message."""
    kept = [line for line in lines if line.strip()][-n:]
    return "; ".join(kept) if kept else "llama.cpp logged no reason"


# --- which kernels ------------------------------------------------------------------------------------
@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.cache
def library_build() -> dict[str, Any]:
    """How the installed llama-cpp-python was compiled: ``.ci/setup`` records ``ff-build.json``
    (CMake flags, compiler) beside the library; ``system_info`` is what ggml itself reports."""
    lc = binding()
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, TypeError):
        recorded = Path(str(lc.__file__)).parent / "ff-build.json"
        info.update(json.loads(recorded.read_text(encoding="utf-8")))
    with captured_log():
        raw = lc.llama_print_system_info()
    info["system_info"] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["version"] = importlib.metadata.version("llama_cpp_python")
    return info


def amx_compiled_in(system_info: str) -> bool:
    return re.search(r"\bAMX_INT8\s*=\s*1\b", system_info) is not None


def _gcc_major(compiler: str) -> int | None:
    m = re.match(r"gcc\s+(\d+)", compiler.strip())
    return int(m.group(1)) if m else None


def extra_buffers_safe(build: dict[str, Any], cpu_flags: frozenset[str]) -> tuple[bool, str]:
    """Whether llama.cpp's extra CPU buffers are safe with this library on this CPU, and why not."""
    if "amx_int8" not in cpu_flags or not amx_compiled_in(str(build.get("system_info", ""))):
        return True, ""
    compiler = str(build.get("compiler", ""))
    major = _gcc_major(compiler)
    if compiler and (major is None or major >= 13):
        return True, ""
    return False, (
        f"this llama-cpp-python was compiled with AMX by {compiler or 'an unknown compiler'} (GCC < 13 "
        "miscompiles ggml's AMX tile config, which crashes multi-token batches on this AMX CPU), so "
        "llama.cpp's extra CPU buffers are off and decoding is slower; rebuild with `bash .ci/setup` "
        "(GGML_NATIVE=OFF, AVX-512, AMX off) or with GCC >= 13"
    )


@functools.cache
def _auto_extra_buffers() -> bool:
    ok, why = extra_buffers_safe(library_build(), _cpu_flags())
    if not ok:
        log.warning("%s", why)
    return ok


def use_extra_buffers(settings: LoadSettings | None = None) -> bool:
    """The extra-buffer choice: the settings' explicit one, else ``FF_LLAMA_EXTRA_BUFFERS``, else safe."""
    if settings is not None and settings.extra_buffers is not None:
        return settings.extra_buffers
    env = os.environ.get("FF_LLAMA_EXTRA_BUFFERS", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return _auto_extra_buffers()


# --- parameters: the one place they are chosen --------------------------------------------------------
def model_params(settings: LoadSettings) -> Any:
    """``llama_model_params`` for ``settings`` (CPU: no layers offloaded; a GPU device: all of them)."""
    lc = binding()
    params = lc.llama_model_default_params()
    params.use_extra_bufts = use_extra_buffers(settings)
    params.n_gpu_layers = 0 if settings.device.split(":")[0] == "cpu" else 999
    return params


def context_params(
    settings: LoadSettings,
    *,
    n_ctx: int,
    n_batch: int | None = None,
    n_ubatch: int | None = None,
    n_seq_max: int = 1,
    embeddings: bool = False,
    pooling: int | None = None,
    kv_unified: bool = False,
) -> Any:
    """``llama_context_params`` for ``settings``: threads, flash attention, sizes."""
    lc = binding()
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch if n_batch is not None else min(n_ctx, 512)
    params.n_ubatch = n_ubatch if n_ubatch is not None else min(params.n_batch, 512)
    params.n_seq_max = n_seq_max
    params.n_threads = settings.n_threads
    params.n_threads_batch = settings.n_threads_batch
    params.embeddings = embeddings
    params.kv_unified = kv_unified  # False: each sequence its own KV stream of n_ctx / n_seq_max cells
    if pooling is not None:
        params.pooling_type = pooling
    params.flash_attn_type = -1 if settings.flash_attn is None else int(settings.flash_attn)  # -1: auto
    params.no_perf = True
    return params


def load_model(path: Path, params: Any) -> Any:
    """A ``llama_model`` pointer for ``path`` loaded with ``params`` (from :func:`model_params`), or
    :class:`RuntimeFailure` with llama.cpp's reason."""
    from ffruntime.errors import RuntimeFailure

    lc = binding()
    with captured_log() as lines:
        model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeFailure(f"llama.cpp cannot load {path}: {log_tail(lines)}")
    return model


def lora_adapter(model: Any, lora: Path, path: Path) -> Any:
    """A LoRA adapter for ``model`` (the GGUF at ``path``), or :class:`RuntimeFailure` saying why not."""
    from ffruntime.errors import RuntimeFailure

    lc = binding()
    with captured_log() as lines:
        adapter = lc.llama_adapter_lora_init(model, str(lora).encode())
    if not adapter:
        raise RuntimeFailure(f"llama.cpp cannot apply the LoRA adapter {lora} to {path}: {log_tail(lines)}")
    return adapter


def attach_lora(ctx: Any, adapters: Sequence[Any], path: Path) -> None:
    """Use every one of ``adapters`` (scale 1 each, as Ollama applies a Modelfile's ADAPTERs) in ``ctx``."""
    from ffruntime.errors import RuntimeFailure

    if not adapters:
        return
    lc = binding()
    n = len(adapters)
    handles = (lc.llama_adapter_lora_p_ctypes * n)(*adapters)
    scales = (ctypes.c_float * n)(*([1.0] * n))
    if lc.llama_set_adapters_lora(ctx, handles, n, scales) != 0:
        raise RuntimeFailure(f"llama.cpp refused to attach the LoRA adapters to {path}")


def free_handles(ctx: Any, loras: Sequence[Any], model: Any) -> None:
    """Free a context, its LoRA adapters and a model (any may be null or empty), in that order, quietly
    (llama.cpp reports its freed buffers on stderr otherwise)."""
    lc = binding()
    with captured_log():
        if ctx:
            lc.llama_free(ctx)
        for lora in loras:
            if lora:
                lc.llama_adapter_lora_free(lora)
        if model:
            lc.llama_model_free(model)
