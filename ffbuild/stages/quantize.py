"""The quantize stage: a GGUF (f32/f16/bf16) → another GGUF type, through llama.cpp's own quantizer.

:func:`run` makes each GGUF variant's weight from ``ctx.base`` through the build cache (or reuses a
stored model's variants as they are); :func:`quantize_gguf` is the quantizer.

Every GGUF type in ``choices.QUANTIZATIONS`` is accepted (``f16``/``bf16``/``f32`` too: llama.cpp then
converts rather than quantizes). Types whose quality depends on an importance matrix are refused:
ff does not compute one. An already quantized source is refused with :class:`RequantizeError` unless
``allow_requantize`` (each rounding compounds the error), and then a warning is logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ffbuild.cache import DigestMeanwhile
from ffbuild.plan import Variant
from ffbuild.stages.context import (
    FLOAT_TYPES,
    BuildContext,
    BuildError,
    Built,
    FetchedKind,
    VariantOutput,
    cached_gguf,
)
from ffbuild.stages.errors import QuantizeError, RequantizeError
from ffbuild.stages.fetch import stored_built
from ffbuild.stages.gguf_info import GGUFInfo, is_quantized, read_gguf_info
from ffruntime.errors import BackendUnavailable
from ffruntime.llamacpp.library import binding, captured_log, log_tail
from ffruntime.settings import available_cores
from registry.atomic import atomic_output
from registry.choices import GGUF_QUANTS, QUANTIZATIONS

logger = logging.getLogger(__name__)


def check_quantization(quantization: str) -> str:
    """The canonical (lower-case) name of a GGUF type ff can produce, or a :class:`QuantizeError`."""
    key = quantization.strip().lower()
    spec = QUANTIZATIONS.get(key)
    if spec is None or spec["format"] != "gguf":
        raise QuantizeError(
            f"unknown GGUF quantization {quantization!r}; choose one of {', '.join(GGUF_QUANTS)}"
        )
    if spec["needs_imatrix"]:
        usable = [k for k in GGUF_QUANTS if not QUANTIZATIONS[k]["needs_imatrix"]]
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
    with DigestMeanwhile() as hashing, atomic_output(dst) as tmp, captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise QuantizeError(
                f"llama.cpp could not quantize {src} (architecture {info.architecture}) to {key}: "
                f"{log_tail(log)}; f16, bf16 and q8_0 take every architecture llama.cpp converts"
            )
        hashing.start(tmp)  # the cache hashes its output: while it is made durable
    return read_gguf_info(dst)


def _quantize_key(ctx: BuildContext, quant: str) -> str:
    """The cache key of quantizing ``ctx.base`` to ``quant`` (refused when the base is quantized already
    and the plan does not allow it)."""
    base = ctx.base
    assert base is not None
    if base.quantization not in FLOAT_TYPES and not (ctx.plan.requantize or ctx.options.allow_requantize):
        raise BuildError(
            f"the source is already quantized ({base.quantization}); quantizing it to {quant} loses "
            "quality twice. Build from an f16/f32 source, or allow it with `QUANTIZE … requantize=true` "
            "or `ff build --allow-requantize`"
        )
    return ctx.cache_key(
        "quantize",
        source=base.weight.digest,
        quantization=quant,
        requantize=base.quantization not in FLOAT_TYPES,
    )


def _quantize(ctx: BuildContext, quant: str, key: str, threads: int | None) -> Built:
    base = ctx.base
    assert base is not None
    allow = base.quantization not in FLOAT_TYPES
    w, secs, hit = cached_gguf(
        ctx,
        "quantize",
        key,
        lambda out: quantize_gguf(base.weight.path, out, quant, allow_requantize=allow, threads=threads),
    )
    return Built(quant, w, read_gguf_info(w.path), secs, hit)


def quantize_side_by_side(ctx: BuildContext, quants: list[str]) -> dict[str, Built]:
    """Each of ``quants`` (distinct, none the base's own type) quantized from ``ctx.base``, side by side,
    one per core, each with every core's thread: llama.cpp's quantizer keeps only ~1.5 of 2 cores busy
    (one thread reads and converts each tensor, the others wait for it) and its threads sleep when idle,
    so two at once fill both cores, and the one left when the other ends still has every thread. The
    outputs are byte for byte those of one at a time (the thread count changes none). ``--threads N``
    gives each N threads and runs cores // N at once. Each one made but the last to finish is
    announced (:meth:`BuildContext.made`) so that the verify stage can measure it beside the quantizer
    still running; the last is left to the verify stage, which then has every core."""
    assert ctx.base is not None
    keys = {q: _quantize_key(ctx, q) for q in quants}  # every refusal before any work
    for q in quants:
        ctx.progress.step("quantize", f"{ctx.base.quantization} → {q}")
    threads = ctx.options.threads
    workers = max(1, min(len(quants), available_cores() // (threads or 1)))
    each = threads if threads is not None else available_cores()
    done: dict[str, Built] = {}
    with ThreadPoolExecutor(workers, thread_name_prefix="ff-quantize") as pool:
        futures = {pool.submit(_quantize, ctx, q, keys[q], each): q for q in quants}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                built = done[futures[future]] = future.result()
                if pending and not built.cached:
                    ctx.made(built)  # the verify stage may start measuring it (verify.ahead)
    return {q: done[q] for q in quants}


def _stored_outputs(ctx: BuildContext, v: Variant) -> None:
    """``QUANTIZE source`` of a model from the store: each of its GGUF variants, as it is."""
    assert ctx.fetched is not None
    for sv in ctx.fetched.variants:
        if sv.ref.format != "gguf" or not sv.files.weights:
            continue
        built = stored_built(sv)
        device, _, detail = sv.ref.target.partition(":")
        variant = Variant(
            quantization=built.quantization,
            device=device,
            device_detail=detail or None,
            backend=sv.ref.backend,
            family=v.family,
        )
        ctx.outputs.append(VariantOutput(variant, built))


def ahead(ctx: BuildContext) -> None:
    """While the convert stage runs llama.cpp's converter (a Hugging Face source), load llama-cpp-python
    in the background (``import llama_cpp``: ~0.2 s of the quantizer's first call otherwise); once."""
    f = ctx.fetched
    if f is None or f.kind != FetchedKind.HF_FOLDER or ctx.base is not None:
        return
    if any(t.name == "ff-load-llama" for t in ctx.ahead):
        return

    def work() -> None:
        with contextlib.suppress(BackendUnavailable):  # the stage meets it and reports it
            binding()

    thread = threading.Thread(target=work, name="ff-load-llama")
    ctx.ahead.append(thread)
    thread.start()


def _stored(v: Variant, kind: FetchedKind) -> bool:
    """A ``source`` variant of a model from the store: its stored GGUFs are taken as they are."""
    return v.quantization == "source" and kind == FetchedKind.STORE


def _quant(v: Variant, base: Built) -> str:
    """The quantization ``v``'s weight has: ``source`` is the base's own."""
    return base.quantization if v.quantization == "source" else v.quantization.lower()


def run(ctx: BuildContext) -> str:
    """The quantize stage: one output per GGUF variant of the plan, its weight made from ``ctx.base``
    (the fresh ones side by side, :func:`quantize_side_by_side`)."""
    f = ctx.fetched
    assert f is not None and ctx.base is not None
    base = ctx.base
    wanted = [_quant(v, base) for v in ctx.plan.variants if not _stored(v, f.kind)]
    to_make = [q for q in dict.fromkeys(wanted) if q != base.quantization and q not in ctx.floats]
    made = quantize_side_by_side(ctx, to_make) if to_make else {}
    for v in ctx.plan.variants:
        if _stored(v, f.kind):
            _stored_outputs(ctx, v)
            continue
        quant = _quant(v, base)
        built = base if quant == base.quantization else ctx.floats.get(quant) or made[quant]
        ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), built))
    quantized = [b for q, b in made.items() if q not in FLOAT_TYPES]
    fresh = sum(not b.cached for b in quantized)
    return f"{len(ctx.outputs)} variant(s); {fresh} quantized, {len(quantized) - fresh} from the cache"
