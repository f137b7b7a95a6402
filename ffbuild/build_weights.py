"""The weight stages: fetch, convert (HF → GGUF), quantize and adapters, each through the build cache."""

from __future__ import annotations

import functools

from ffbuild.build_context import (
    FLOAT_TYPES,
    BuildContext,
    BuildError,
    Built,
    VariantOutput,
    cached_gguf,
    run_convert,
    run_convert_lora,
    stored_built,
    weight_file,
)
from ffbuild.cache import folder_digest, path_digest
from ffbuild.plan import SourceKind, Variant
from ffbuild.stages.fetch import FetchedKind, fetch
from ffbuild.stages.genai import is_genai
from ffbuild.stages.gguf_info import read_gguf_info


def fetch_stage(ctx: BuildContext) -> str:
    for v in ctx.plan.variants:  # refused before anything is fetched
        if is_genai(ctx.plan.task, v.backend) and ctx.plan.source.kind not in (
            SourceKind.HF_FOLDER,
            SourceKind.HF_REPO,
        ):
            raise BuildError(
                f"variant {v.name}: {v.backend} chat/generate variants are exported by ONNX Runtime "
                "GenAI from Hugging Face weights (FROM a model folder or hf://org/repo), "
                f"not a {ctx.plan.source.kind}"
            )
    ctx.fetched = fetch(ctx.plan.source, ctx.store)
    return ctx.fetched.description


def _requested_floats(ctx: BuildContext) -> list[str]:
    return [q for q in FLOAT_TYPES if any(v.quantization == q for v in ctx.plan.variants)]


def convert_stage(ctx: BuildContext) -> str:
    f = ctx.fetched
    if f is None:
        raise BuildError("convert ran before fetch")
    if f.kind == FetchedKind.HF_FOLDER:
        from ffbuild.stages.convert import convert_hf_to_gguf, default_model_name

        assert f.path is not None
        folder = f.path
        source_digest = folder_digest(folder)
        wanted = _requested_floats(ctx) or ["f16"]
        name = default_model_name(folder)  # general.name: part of the output, so part of the key
        for outtype in wanted:
            key = ctx.cache_key("convert", source=source_digest, outtype=outtype, name=name)
            ctx.progress.step("convert", f"{f.description} → {outtype}")
            w, secs, hit = cached_gguf(
                ctx, "convert", key, functools.partial(run_convert, convert_hf_to_gguf, folder, outtype, name)
            )
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


def _quantize(ctx: BuildContext, quant: str) -> Built:
    base = ctx.base
    assert base is not None
    if quant == base.quantization:
        return base
    if quant in ctx.floats:
        return ctx.floats[quant]
    if base.quantization not in FLOAT_TYPES and not (ctx.plan.requantize or ctx.options.allow_requantize):
        raise BuildError(
            f"the source is already quantized ({base.quantization}); quantizing it to {quant} loses "
            "quality twice. Build from an f16/f32 source, or allow it with `QUANTIZE … requantize=true` "
            "or `ff build --allow-requantize`"
        )
    from ffbuild.stages.quantize import quantize_gguf

    key = ctx.cache_key(
        "quantize",
        source=base.weight.digest,
        quantization=quant,
        requantize=base.quantization not in FLOAT_TYPES,
    )
    ctx.progress.step("quantize", f"{base.quantization} → {quant}")
    allow = base.quantization not in FLOAT_TYPES
    w, secs, hit = cached_gguf(
        ctx,
        "quantize",
        key,
        lambda out: quantize_gguf(
            base.weight.path, out, quant, allow_requantize=allow, threads=ctx.options.threads
        ),
    )
    return Built(quant, w, read_gguf_info(w.path), secs, hit)


def quantize_stage(ctx: BuildContext) -> str:
    f = ctx.fetched
    assert f is not None and ctx.base is not None
    done: dict[str, Built] = {}
    for v in ctx.plan.variants:
        if is_genai(ctx.plan.task, v.backend):
            continue  # the genai stage exports these
        if v.quantization == "source" and f.kind == FetchedKind.STORE:
            for sv in f.variants:
                if sv.ref.format != "gguf" or not sv.files.weights:
                    continue
                built = stored_built(sv)
                target = sv.ref.target
                device, _, detail = target.partition(":")
                ctx.outputs.append(
                    VariantOutput(
                        Variant(
                            quantization=built.quantization,
                            device=device,
                            device_detail=detail or None,
                            backend=sv.ref.backend,
                        ),
                        built,
                    )
                )
            continue
        quant = ctx.base.quantization if v.quantization == "source" else v.quantization.lower()
        if quant not in done:
            done[quant] = _quantize(ctx, quant)
        ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), done[quant]))
    quantized = [b for q, b in done.items() if q not in FLOAT_TYPES and b is not ctx.base]
    made = sum(not b.cached for b in quantized)
    return f"{len(ctx.outputs)} variant(s); {made} quantized, {len(quantized) - made} from the cache"


def adapters_stage(ctx: BuildContext) -> str:
    """ADAPTERs: GGUF LoRAs are checked against the base; PEFT folders are converted (cached)."""
    if not ctx.plan.adapters:
        return "no adapters"
    from ffbuild.stages.lora import check_gguf_lora, convert_peft_lora

    if ctx.base is None:
        raise BuildError("adapters ran before convert")
    f = ctx.fetched
    base = f.path if f is not None and f.kind == FetchedKind.HF_FOLDER and f.path else ctx.base.weight.path
    base_digest = folder_digest(base) if base.is_dir() else ctx.base.weight.digest
    for a in ctx.plan.adapters:
        ctx.progress.step("adapters", a.raw)
        if a.kind == "gguf":
            check_gguf_lora(a.path, base=ctx.base.weight.path)
            ctx.adapters.append(weight_file(a.path))
            continue
        key = ctx.cache_key("lora", adapter=path_digest(a.path), base=base_digest)
        w, _, _ = cached_gguf(
            ctx, "lora", key, functools.partial(run_convert_lora, convert_peft_lora, a.path, base)
        )
        ctx.adapters.append(w)
    return f"{len(ctx.adapters)} adapter(s)"
