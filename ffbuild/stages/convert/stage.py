"""The convert stage (:func:`run`): the GGUF the build starts from, and a multimodal model's projector.

A Hugging Face folder is converted by llama.cpp's converter
(:func:`ffbuild.stages.convert.start_conversion`, cached) to each float type the variants ask for,
f16 when they ask for none; a folder with a vision or audio tower also gives its projector
(``--mmproj``, f16, ``ctx.projector``); a GGUF source is used as it is (with the projector GGUF of a
second FROM line); a model from the store gives its highest-precision GGUF variant (and its projector).
``ctx.base`` is then the quantization source. Every cache key holds the converter's digest
(:attr:`~ffbuild.stages.convert.source.LlamaCppSource.digest`).
"""

from __future__ import annotations

from pathlib import Path

from ffbuild.cache import CacheValue
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    FetchedKind,
    cached_gguf,
    weight_file,
)
from ffbuild.stages.convert import Conversion, default_model_name, is_multimodal, start_conversion
from ffbuild.stages.convert.early import requested_floats
from ffbuild.stages.convert.source import llama_cpp_source
from ffbuild.stages.errors import StageError
from ffbuild.stages.fetch import stored_built
from ffbuild.stages.gguf_info import read_gguf_info

PROJECTOR_TYPE = "f16"
"""Projectors stay f16: only the text model is quantized (as Ollama and llama.cpp ship them)."""


def _convert_cached(
    ctx: BuildContext, folder: Path, outtype: str, name: str, *, mmproj: bool, digests: dict[str, str]
) -> Built:
    """One conversion through the cache. The key needs the source folder's digest: for a folder this
    cache has not hashed as it is (:meth:`~ffbuild.cache.BuildCache.knows_folder`) every weight is read
    once, so the converter starts first and runs meanwhile (a hit then stops it); a folder hashed before
    gives its key at once, and the converter starts only on a miss. A conversion ``ff build`` started
    before the stages ran (:mod:`ffbuild.stages.convert.early`) is taken over, not started again."""
    try:
        src = llama_cpp_source()
    except StageError as exc:
        raise BuildError(str(exc)) from None

    def report(msg: str) -> None:
        ctx.progress.step("convert", msg)

    def start() -> Conversion:
        return start_conversion(
            folder,
            outtype,
            name=name,
            report=report,
            mmproj=mmproj,
            source=src,
            scratch=ctx.cache.scratch("convert"),
        )

    conversion = ctx.started.take(folder, outtype, name, mmproj=mmproj)
    if conversion is not None:
        conversion.report_to(report)
    elif "source" not in digests and not ctx.cache.knows_folder(folder):
        conversion = start()  # the folder's digest takes a while: convert meanwhile

    def make(out: Path) -> object:
        nonlocal conversion
        conversion = conversion or start()
        return conversion.finish(out)

    try:
        if "source" not in digests:
            digests["source"] = ctx.cache.folder_digest(folder)
            ctx.warm_keys(("quantize", "verify"))  # the stages after this one, while the converter runs
        inputs: dict[str, CacheValue] = {"source": digests["source"], "converter": src.digest}
        if mmproj:
            inputs["projector"] = True
        key = ctx.cache_key("convert", outtype=outtype, name=name, **inputs)
        w, secs, hit = cached_gguf(ctx, "convert", key, make)
    finally:
        if conversion is not None:
            conversion.cancel()
    return Built(outtype, w, read_gguf_info(w.path), secs, hit)


def _convert_folder(ctx: BuildContext, folder: Path, description: str) -> str:
    wanted = requested_floats(ctx.plan.variants)
    name = default_model_name(folder)  # general.name: part of the output, so part of the key
    digests: dict[str, str] = {}
    for outtype in wanted:
        ctx.progress.step("convert", f"{description} → {outtype}")
        ctx.floats[outtype] = _convert_cached(ctx, folder, outtype, name, mmproj=False, digests=digests)
    ctx.base = ctx.floats[wanted[0]]
    summary = ", ".join(wanted)
    if is_multimodal(folder):
        ctx.progress.step("convert", f"{description} → projector ({PROJECTOR_TYPE})")
        ctx.projector = _convert_cached(ctx, folder, PROJECTOR_TYPE, name, mmproj=True, digests=digests)
        summary += " + projector"
    hits = sum(b.cached for b in ctx.floats.values())
    return summary + (" (cached)" if hits == len(wanted) else "")


def _projector_file(ctx: BuildContext) -> None:
    path = ctx.plan.projector
    if path is None:
        return
    info = read_gguf_info(path)
    if info.architecture != "clip":
        raise BuildError(
            f"the second FROM {path} is a {info.architecture} GGUF, not a multimodal projector "
            "(general.architecture clip, as convert_hf_to_gguf.py --mmproj writes)"
        )
    ctx.projector = Built(info.quantization.lower(), weight_file(path), info)


def run(ctx: BuildContext) -> str:
    """The convert stage: ``ctx.floats`` (conversions by float type), ``ctx.base`` and ``ctx.projector``."""
    f = ctx.fetched
    if f is None:
        raise BuildError("convert ran before fetch")
    if f.kind == FetchedKind.HF_FOLDER:
        assert f.path is not None
        return _convert_folder(ctx, f.path, f.description)
    if f.kind == FetchedKind.GGUF:
        assert f.path is not None
        info = read_gguf_info(f.path)
        if info.is_adapter:
            raise BuildError(f"FROM {f.path} is a LoRA adapter, not a model; name it with ADAPTER instead")
        if info.architecture == "clip":
            raise BuildError(
                f"FROM {f.path} is a multimodal projector: give the model GGUF in the first FROM"
            )
        ctx.base = Built(info.quantization.lower(), weight_file(f.path), info)
        _projector_file(ctx)
        extra = " and its projector" if ctx.projector else ""
        return f"source is {info.quantization} GGUF{extra}: nothing to convert"
    stored = [stored_built(sv) for sv in f.variants if sv.ref.format == "gguf" and sv.files.weights]
    if not stored:
        raise BuildError(f"FROM {f.description}: the model has no GGUF variant to build from")
    ctx.base = max(stored, key=lambda b: b.bits)
    projectors = [sv.files.projector for sv in f.variants if sv.files.projector is not None]
    if projectors:
        p = projectors[0]
        ctx.projector = Built(PROJECTOR_TYPE, weight_file(p), read_gguf_info(p))
    return f"reusing the weights of {f.description}: nothing to convert"
