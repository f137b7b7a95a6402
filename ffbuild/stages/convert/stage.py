"""The convert stage (:func:`run`): the GGUF the build starts from.

A Hugging Face folder is converted (:func:`ffbuild.stages.convert.convert_hf_to_gguf`, cached) to each
float type the variants ask for, f16 when they ask for none; a GGUF source is used as it is; a model
from the store gives its highest-precision GGUF variant. ``ctx.base`` is then the quantization source.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ffbuild.cache import folder_digest
from ffbuild.stages.context import (
    FLOAT_TYPES,
    BuildContext,
    BuildError,
    Built,
    FetchedKind,
    cached_gguf,
    weight_file,
)
from ffbuild.stages.convert import convert_hf_to_gguf, default_model_name
from ffbuild.stages.fetch import stored_built
from ffbuild.stages.gguf_info import read_gguf_info


def _requested_floats(ctx: BuildContext) -> list[str]:
    return [q for q in FLOAT_TYPES if any(v.quantization == q for v in ctx.plan.variants)]


def _run_convert(fn: Callable[..., object], folder: Path, outtype: str, name: str, out: Path) -> object:
    return fn(folder, out, outtype=outtype, name=name)


def run(ctx: BuildContext) -> str:
    """The convert stage: ``ctx.floats`` (conversions by float type) and ``ctx.base``."""
    f = ctx.fetched
    if f is None:
        raise BuildError("convert ran before fetch")
    if f.kind == FetchedKind.HF_FOLDER:
        assert f.path is not None
        folder = f.path
        source_digest = folder_digest(folder)
        wanted = _requested_floats(ctx) or ["f16"]
        name = default_model_name(folder)  # general.name: part of the output, so part of the key
        for outtype in wanted:
            key = ctx.cache_key("convert", source=source_digest, outtype=outtype, name=name)
            ctx.progress.step("convert", f"{f.description} → {outtype}")
            make = functools.partial(_run_convert, convert_hf_to_gguf, folder, outtype, name)
            w, secs, hit = cached_gguf(ctx, "convert", key, make)
            ctx.floats[outtype] = Built(outtype, w, read_gguf_info(w.path), secs, hit)
        ctx.base = ctx.floats[wanted[0]]
        hits = sum(b.cached for b in ctx.floats.values())
        return f"{', '.join(wanted)}" + (" (cached)" if hits == len(wanted) else "")
    if f.kind == FetchedKind.GGUF:
        assert f.path is not None
        info = read_gguf_info(f.path)
        if info.is_adapter:
            raise BuildError(f"FROM {f.path} is a LoRA adapter, not a model; name it with ADAPTER instead")
        ctx.base = Built(info.quantization.lower(), weight_file(f.path), info)
        return f"source is {info.quantization} GGUF: nothing to convert"
    stored = [stored_built(sv) for sv in f.variants if sv.ref.format == "gguf" and sv.files.weights]
    if not stored:
        raise BuildError(f"FROM {f.description}: the model has no GGUF variant to build from")
    ctx.base = max(stored, key=lambda b: b.bits)
    return f"reusing the weights of {f.description}: nothing to convert"
