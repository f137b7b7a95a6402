"""The llama.cpp backend, on llama.cpp's C API through llama-cpp-python's ctypes binding.

Modules: ``runtime`` (the loaded model: chat, completion, embeddings), ``engine`` (the batching
decode thread), ``sampling`` (per-sequence sampler chains), ``text`` (UTF-8 and stop strings),
``vocab`` (the vocabulary), ``embeddings`` (batched embeddings), ``eval`` (the verify stage's
evaluator) and ``library`` (the binding, model and context parameters, the OpenMP policy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ffruntime.llamacpp.runtime import LlamaCppRuntime
    from ffruntime.settings import LoadSettings
    from registry.artifact import ModelFiles, VariantRef

__all__ = ["load"]


async def load(variant: VariantRef, files: ModelFiles, opts: LoadSettings) -> LlamaCppRuntime:
    """Load a GGUF variant (the runtime module is imported only here: the library and verify's
    evaluator stay importable without it)."""
    from ffruntime.llamacpp.runtime import load as load_runtime

    return await load_runtime(variant, files, opts)
