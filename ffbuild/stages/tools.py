"""Versions of the tools each build stage runs: part of every build-cache key.

A key covers the packages a stage calls (llama-cpp-python, gguf, torch and transformers, which llama.cpp's
converter runs on) and the digest of
the code the stage runs (the import closure of its modules within ff's packages), so upgrading a tool
or changing any module a stage imports never reuses stale output.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from ffbuild import __version__
from ffbuild.stages.codekey import SOURCE_ROOT, CodeKeyError, code_digest

_PACKAGES = ("llama_cpp_python", "gguf", "numpy", "safetensors", "torch", "transformers")
_ONNX = "ffbuild.stages.onnx_export"
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "convert": ("ffbuild.stages.convert.stage",),
    "quantize": ("ffbuild.stages.quantize",),
    "lora": ("ffbuild.stages.lora",),
    "verify": ("ffbuild.stages.verify",),
    "genai": ("ffbuild.stages.genai",),
    "genai_verify": ("ffbuild.stages.verify",),
    "verify_projector": ("ffbuild.stages.verify.projector",),
    "onnx_export": (_ONNX,),
    "onnx_source": (_ONNX,),
    "onnx_quantize": (_ONNX,),
    "verify_tensor": (
        "ffbuild.stages.verify_tensor",
        "ffruntime.onnxruntime",
        "ffruntime.tvm",
        "ffruntime.tensorrt",
    ),
    "tvm_tune": ("ffbuild.stages.tvm_compile",),
    "tvm_compile": ("ffbuild.stages.tvm_compile",),
    "tensorrt_build": ("ffbuild.stages.tensorrt_build",),
    "speech": ("ffbuild.stages.speech",),
    "speech_clips": ("ffbuild.stages.verify_speech",),
    "verify_speech": ("ffbuild.stages.verify_speech", "ffruntime.ctranslate2"),
}
"""The modules each stage runs (its ``run`` module, whose closure holds its worker), by
the name its cache entries go under. A key covers their import closure (:mod:`ffbuild.stages.codekey`),
so a change to any module they import is a cache miss; besides a stage's modules, list only what the
closure cannot see (the backends ``ffruntime.local`` loads by name)."""


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def stage_code_digest(stage: str, root: Path = SOURCE_ROOT) -> str:
    """The digest of the code ``stage`` runs: every file in its modules' import closure under ``root``."""
    if stage not in STAGE_MODULES:
        raise CodeKeyError(f"no modules are listed for build stage {stage!r} (ffbuild.stages.tools)")
    return code_digest(STAGE_MODULES[stage], root)


@functools.cache
def stage_tools(stage: str) -> dict[str, str | None]:
    """What a stage's output depends on besides its inputs and options."""
    out: dict[str, str | None] = {"ffbuild": __version__}
    out.update({p: package_version(p) for p in _PACKAGES})
    out["code"] = stage_code_digest(stage)
    return out


def tensor_tools() -> dict[str, str | None]:
    """The packages the tensor stages (export, quantize, compile) run: part of their cache keys."""
    return {p: package_version(p) for p in ("torch", "transformers", "onnx", "onnxruntime", "apache-tvm")}


def runtime_version() -> str:
    """The runtime the verify stage ran variants with (the io.ferrousforge.runtime annotation)."""
    return f"llama-cpp-python {package_version('llama_cpp_python') or 'unknown'}"
