"""Versions of the tools each build stage runs: part of every build-cache key.

A key covers the packages a stage calls (llama-cpp-python, gguf, huggingface_hub) and the digest of
the stage's own source file, so upgrading a tool or changing a stage's code never reuses stale output.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

from ffbuild import __version__

_STAGES_DIR = Path(__file__).resolve().parent
_ROOT = _STAGES_DIR.parents[1]  # the directory holding the ffbuild and ffruntime packages
_PACKAGES = ("llama_cpp_python", "gguf", "numpy", "safetensors")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "convert": ("convert",),
    "quantize": ("quantize", "ffruntime/llamacpp/library"),
    "lora": ("lora", "convert"),
    "verify": (
        "verify", "registry/gguf_info", "ffruntime/llamacpp/eval", "ffruntime/llamacpp/library",
        "ffruntime/llamacpp/vocab", "ffruntime/prompting", "ffruntime/gotemplate", "ffruntime/settings",
    ),
    "genai": ("genai",),
    "genai_verify": (
        "genai_verify", "verify", "ffruntime/genai_model", "ffruntime/llamacpp/eval", "ffruntime/prompting",
        "ffruntime/gotemplate", "ffruntime/settings",
    ),
    "onnx_export": ("onnx_export", "ffruntime/graph_spec"),
    "verify_tensor": (
        "verify_tensor", "onnx_export", "ffruntime/graph_runtime", "ffruntime/onnxruntime", "ffruntime/tvm"
    ),
}
"""The modules whose code shapes each stage's output (a change to any of them is a cache miss): a stage
module's name, or a path under the source root for the runtime modules the stages load through."""


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _module_digest(module: str) -> str | None:
    """sha256 over a stage module's source: ``<module>.py``, or every ``.py`` of a ``<module>/`` package."""
    base = _ROOT if "/" in module else _STAGES_DIR
    single = base / f"{module}.py"
    files = [single] if single.is_file() else sorted((base / module).rglob("*.py"))
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(base).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@functools.cache
def stage_tools(stage: str) -> dict[str, str | None]:
    """What a stage's output depends on besides its inputs and options."""
    out: dict[str, str | None] = {"ffbuild": __version__}
    out.update({p: package_version(p) for p in _PACKAGES})
    for module in STAGE_MODULES.get(stage, (stage,)):
        out[f"code:{module}"] = _module_digest(module)
    return out


def tensor_tools() -> dict[str, str | None]:
    """The packages the tensor stages (export, quantize, compile) run: part of their cache keys."""
    return {p: package_version(p) for p in ("torch", "transformers", "onnx", "onnxruntime", "apache-tvm")}


def runtime_version() -> str:
    """The runtime the verify stage ran variants with (the io.ferrousforge.runtime annotation)."""
    return f"llama-cpp-python {package_version('llama_cpp_python') or 'unknown'}"
