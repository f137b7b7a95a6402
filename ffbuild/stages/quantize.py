"""The quantize stage: a GGUF (f32/f16/bf16) → another GGUF type, through llama.cpp's own quantizer.

Every GGUF type in ``choices.QUANTIZATIONS`` is accepted (``f16``/``bf16``/``f32`` too: llama.cpp then
converts rather than quantizes). Types whose quality depends on an importance matrix are refused:
ff does not compute one. An already quantized source is refused with :class:`RequantizeError` unless
``allow_requantize`` (each rounding compounds the error), and then a warning is logged.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from ffbuild.stages.errors import QuantizeError, RequantizeError
from ffbuild.stages.gguf_info import GGUFInfo, is_quantized, read_gguf_info
from ffruntime.llamacpp.library import binding, captured_log, log_tail
from ffruntime.settings import available_cores
from registry.atomic import atomic_output
from registry.choices import QUANTIZATIONS

logger = logging.getLogger(__name__)

GGUF_TYPES: tuple[str, ...] = tuple(k for k, v in QUANTIZATIONS.items() if v["format"] == "gguf")


def check_quantization(quantization: str) -> str:
    """The canonical (lower-case) name of a GGUF type ff can produce, or a :class:`QuantizeError`."""
    key = quantization.strip().lower()
    spec = QUANTIZATIONS.get(key)
    if spec is None or spec["format"] != "gguf":
        raise QuantizeError(
            f"unknown GGUF quantization {quantization!r}; choose one of {', '.join(GGUF_TYPES)}"
        )
    if spec["needs_imatrix"]:
        usable = [k for k in GGUF_TYPES if not QUANTIZATIONS[k]["needs_imatrix"]]
        raise QuantizeError(
            f"{key} needs an importance matrix (imatrix), which ff does not compute; "
            f"choose a type that does not: {', '.join(usable)}"
        )
    return key


def quantize_gguf(
    src: Path,
    dst: Path,
    quantization: str,
    *,
    allow_requantize: bool = False,
    threads: int | None = None,
) -> GGUFInfo:
    """Quantize ``src`` to ``dst`` (written atomically) and describe the result."""
    key = check_quantization(quantization)
    ftype = QUANTIZATIONS[key]["ftype"]
    assert ftype is not None
    info = read_gguf_info(src)
    if info.is_adapter:
        raise QuantizeError(f"{src} is a LoRA adapter; adapters are applied as they are, not quantized")
    if is_quantized(info):
        if not allow_requantize:
            raise RequantizeError(
                f"{src} is already quantized ({info.quantization}); quantizing it again to {key} compounds "
                "the rounding error. Build from an f16/bf16/f32 source, or allow it with requantize=true."
            )
        logger.warning(
            "requantizing %s from %s to %s: quality will be worse than quantizing from f16",
            src,
            info.quantization,
            key,
        )
    if src.resolve() == dst.resolve():
        raise QuantizeError(f"source and destination are the same file: {src}")
    llama_cpp = binding()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads if threads is not None else available_cores()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    with atomic_output(dst) as tmp, captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise QuantizeError(f"llama.cpp could not quantize {src} to {key}: {log_tail(log)}")
    return read_gguf_info(dst)
