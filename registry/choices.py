"""The plain tables every part of ff reads its choices from: quantizations, backends, devices, tasks.

They say what a variant *is*, so they live in ``registry`` (which every other package may import):
the planner validates against them, ``registry.select`` ranks with them, ``ffruntime`` finds a
backend's module and extra through them, and the CLI's help and the docs are made from them. Add a
row here and the rest follows.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict


class Quantization(TypedDict):
    format: str  # "gguf" or "onnx"
    ftype: int | None  # llama.cpp's LLAMA_FTYPE_* value for GGUF types
    bits: float  # approximate bits per weight, for sizing and ordering by precision
    needs_imatrix: bool
    description: str


def _g(ftype: int, bits: float, description: str, needs_imatrix: bool = False) -> Quantization:
    return {
        "format": "gguf",
        "ftype": ftype,
        "bits": bits,
        "needs_imatrix": needs_imatrix,
        "description": description,
    }


QUANTIZATIONS: Final[dict[str, Quantization]] = {
    # GGUF, by llama.cpp's names and LLAMA_FTYPE_MOSTLY_* ids (checked against llama_cpp in the tests).
    "f32": _g(0, 32, "32-bit float, no quantization"),
    "f16": _g(1, 16, "16-bit float"),
    "bf16": _g(32, 16, "bfloat16"),
    "q8_0": _g(7, 8.5, "8-bit, near lossless"),
    "q6_k": _g(18, 6.56, "6-bit k-quant"),
    "q5_k_m": _g(17, 5.69, "5-bit k-quant, medium"),
    "q5_k_s": _g(16, 5.54, "5-bit k-quant, small"),
    "q5_1": _g(9, 6.0, "5-bit legacy, with offset"),
    "q5_0": _g(8, 5.5, "5-bit legacy"),
    "q4_k_m": _g(15, 4.89, "4-bit k-quant, medium (a common default)"),
    "q4_k_s": _g(14, 4.58, "4-bit k-quant, small"),
    "q4_1": _g(3, 5.0, "4-bit legacy, with offset"),
    "q4_0": _g(2, 4.5, "4-bit legacy"),
    "iq4_nl": _g(25, 4.5, "4-bit non-linear"),
    "iq4_xs": _g(30, 4.25, "4-bit i-quant, extra small"),
    "q3_k_l": _g(13, 4.27, "3-bit k-quant, large"),
    "q3_k_m": _g(12, 3.91, "3-bit k-quant, medium"),
    "q3_k_s": _g(11, 3.5, "3-bit k-quant, small"),
    "iq3_m": _g(27, 3.66, "3-bit i-quant, medium"),
    "iq3_s": _g(26, 3.44, "3-bit i-quant, small"),
    "iq3_xs": _g(22, 3.3, "3-bit i-quant, extra small"),
    "iq3_xxs": _g(23, 3.06, "3-bit i-quant, extra extra small"),
    "q2_k": _g(10, 3.0, "2-bit k-quant"),
    "q2_k_s": _g(21, 2.8, "2-bit k-quant, small", needs_imatrix=True),
    "iq2_m": _g(29, 2.7, "2-bit i-quant, medium", needs_imatrix=True),
    "iq2_s": _g(28, 2.5, "2-bit i-quant, small", needs_imatrix=True),
    "iq2_xs": _g(20, 2.31, "2-bit i-quant, extra small", needs_imatrix=True),
    "iq2_xxs": _g(19, 2.06, "2-bit i-quant, extra extra small", needs_imatrix=True),
    "iq1_m": _g(31, 1.75, "1-bit i-quant, medium", needs_imatrix=True),
    "iq1_s": _g(24, 1.56, "1-bit i-quant, small", needs_imatrix=True),
    "tq1_0": _g(36, 1.69, "ternary, for ternary-trained models"),
    "tq2_0": _g(37, 2.06, "ternary, for ternary-trained models"),
    # ONNX-family targets (onnxruntime, tvm, tensorrt).
    "fp32": {
        "format": "onnx",
        "ftype": None,
        "bits": 32,
        "needs_imatrix": False,
        "description": "32-bit float graph",
    },
    "fp16": {
        "format": "onnx",
        "ftype": None,
        "bits": 16,
        "needs_imatrix": False,
        "description": "16-bit float graph",
    },
    "int8": {
        "format": "onnx",
        "ftype": None,
        "bits": 8,
        "needs_imatrix": False,
        "description": "8-bit integer weights (dynamic, per-channel)",
    },
    "int4": {
        "format": "onnx",
        "ftype": None,
        "bits": 4,
        "needs_imatrix": False,
        "description": "4-bit integer weights (chat/generate models on ONNX Runtime GenAI)",
    },
    # CTranslate2 storage types by CTranslate2's own names (int8 above is shared: int8 weights with
    # per-row scales, as CTranslate2's converter writes them).
    "float32": {
        "format": "ctranslate2",
        "ftype": None,
        "bits": 32,
        "needs_imatrix": False,
        "description": "32-bit float weights (CTranslate2)",
    },
    "float16": {
        "format": "ctranslate2",
        "ftype": None,
        "bits": 16,
        "needs_imatrix": False,
        "description": "16-bit float weights (CTranslate2)",
    },
}


class Backend(TypedDict):
    format: str  # the artifact format the backend runs
    devices: tuple[str, ...]
    quantizations: tuple[str, ...]
    extra: str  # the pip extra that installs it
    module: str  # the Python package it needs (installed ⇔ importable)
    preference: int  # among variants of equal device and precision, the higher wins
    description: str


GGUF_QUANTS: Final = tuple(k for k, v in QUANTIZATIONS.items() if v["format"] == "gguf")
ONNX_QUANTS: Final = tuple(k for k, v in QUANTIZATIONS.items() if v["format"] == "onnx")

BACKENDS: Final[dict[str, Backend]] = {
    "llamacpp": {
        "format": "gguf",
        "devices": ("cpu", "cuda", "rocm", "metal", "vulkan"),
        "quantizations": GGUF_QUANTS,
        "extra": "gguf",
        "module": "llama_cpp",
        "preference": 4,
        "description": "llama.cpp through llama-cpp-python",
    },
    "onnxruntime": {
        "format": "onnx",
        "devices": ("cpu", "cuda", "rocm"),
        "quantizations": ("fp32", "fp16", "int8", "int4"),
        "extra": "onnx",
        "module": "onnxruntime",
        "preference": 2,
        "description": "ONNX Runtime",
    },
    "tvm": {
        "format": "tvm",
        "devices": ("cpu", "cuda", "rocm", "metal", "vulkan"),
        "quantizations": ("fp32", "fp16"),
        "extra": "tvm",
        "module": "tvm",
        "preference": 1,
        "description": "Apache TVM (Relax), compiled ahead of time",
    },
    "tensorrt": {
        "format": "tensorrt",
        "devices": ("cuda",),
        "quantizations": ("fp32", "fp16", "int8"),
        "extra": "tensorrt",
        "module": "tensorrt",
        "preference": 3,
        "description": "NVIDIA TensorRT engine (built on the target GPU)",
    },
    "ctranslate2": {
        "format": "ctranslate2",
        "devices": ("cpu", "cuda"),
        "quantizations": ("int8", "float16", "float32"),
        "extra": "speech",
        "module": "faster_whisper",
        "preference": 2,
        "description": "CTranslate2 through faster-whisper (Whisper speech to text)",
    },
}

TEXT_TASKS: Final = ("chat", "generate")

GENERATORS: Final[dict[str, tuple[str, str]]] = {"onnxruntime": ("onnxruntime_genai", "genai")}
"""Backends whose chat/generate variants run on a separate generator package: backend → (the Python
module it needs, the pip extra). ONNX Runtime runs LLMs through ONNX Runtime GenAI (its KV cache and
search loop); on CUDA the same module comes from ``onnxruntime-genai-cuda``."""

Family = Literal["gguf", "genai", "tensor", "speech"]
"""What builds a variant: ``gguf`` (llama.cpp), ``genai`` (an LLM exported by ONNX Runtime GenAI; its GGUF
conversion is the verify reference), ``tensor`` (ONNX export, then onnxruntime/TVM/TensorRT), ``speech``
(a CTranslate2 Whisper model stored at each CTranslate2 type, verified by word error rate)."""

SPEECH_TASKS: Final = ("transcribe",)
"""Tasks whose variants are CTranslate2 Whisper models (the ``speech`` family)."""


def variant_family(task: str, backend: str) -> Family:
    """The family of a variant of a ``task`` model on ``backend``: the planner sets it once per variant
    (``Variant.family``) and the build's stages are chosen by it."""
    if BACKENDS[backend]["format"] == "gguf":
        return "gguf"
    if BACKENDS[backend]["format"] == "ctranslate2":
        return "speech"
    return "genai" if task in TEXT_TASKS and backend in GENERATORS else "tensor"


def default_backend(family: str, device: str) -> str:
    """The backend a TARGET without BACKEND gets: llamacpp for ``gguf``; for the ONNX family (a type's
    format ``onnx``, a variant's family ``genai`` or ``tensor``) onnxruntime where it runs, else tvm;
    ctranslate2 for the ``speech`` family (a type's format ``ctranslate2``)."""
    if family == "gguf":
        return "llamacpp"
    if family in ("speech", "ctranslate2"):
        return "ctranslate2"
    return "onnxruntime" if device in BACKENDS["onnxruntime"]["devices"] else "tvm"


DEVICE_PREFERENCE: Final[dict[str, int]] = {"cuda": 3, "rocm": 3, "metal": 3, "vulkan": 2, "cpu": 1}
"""An accelerator beats the CPU when several variants fit."""

DEVICES: Final[dict[str, str]] = {
    "cpu": "x86-64 or arm64 CPU",
    "cuda": "NVIDIA GPU (optionally cuda:sm_XY)",
    "rocm": "AMD GPU",
    "metal": "Apple GPU",
    "vulkan": "any Vulkan GPU",
}

TASKS: Final[dict[str, str]] = {
    "chat": "chat completion with a template",
    "generate": "raw text completion",
    "embed": "sentence embeddings",
    "classify": "sequence classification",
    "tensor": "raw tensors in and out (Open Inference Protocol)",
    "transcribe": "speech to text (Whisper on CTranslate2)",
}

SOURCE_FORMATS: Final[dict[str, str]] = {
    ".gguf": "gguf",
    ".onnx": "onnx",
    ".safetensors": "safetensors",
}
