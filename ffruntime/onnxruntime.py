"""The ``onnxruntime`` backend: ``ffruntime.load`` imports this module for every ONNX variant.

A chat/generate variant (its files hold ``genai_config.json``) runs on ONNX Runtime GenAI
(:mod:`ffruntime.onnxruntime_genai`). Encoder and tensor models are not in this build of the module.
"""

from __future__ import annotations

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import Runtime
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef
from registry.choices import GENERATORS

GENAI_CONFIG = "genai_config.json"


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
    if GENAI_CONFIG in files.files:
        module, extra = GENERATORS["onnxruntime"]
        try:
            from ffruntime import onnxruntime_genai
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise BackendUnavailable.missing(module, extra, f"the LLM variant {variant.name}") from None
        return await onnxruntime_genai.load(variant, files, settings)
    raise BackendUnavailable(
        f"variant {variant.name} is an ONNX encoder/tensor model; the ONNX Runtime encoder runtime is not "
        "in this build of ff"
    )
