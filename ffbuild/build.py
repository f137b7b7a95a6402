"""The build pipeline: a BuildPlan → verified GGUF variants in the local store.

The build is the list :data:`STAGES` — fetch → convert → quantize → adapters → verify → package —
each a function over one :class:`BuildContext`. Every stage that does work runs through the build
cache (:mod:`ffbuild.cache`), keyed by the digests of its inputs, so a rebuild with nothing changed
converts, quantizes and verifies nothing and writes the same digests.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ffbuild.cache import BuildCache, CacheValue, file_digest, folder_digest, path_digest, stage_key
from ffbuild.choices import QUANTIZATIONS
from ffbuild.plan import BuildPlan, Variant
from ffbuild.stages import tools
from ffbuild.stages.errors import StageError
from ffbuild.stages.fetch import Fetched, FetchedKind, StoredVariant, fetch
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_info
from ffbuild.stages.package import JSONValue, ModelMeta, VariantPayload, WeightFile, package_model
from registry.reference import Reference
from registry.store import Store

if TYPE_CHECKING:
    from ffbuild.stages.verify import VerifyReport

FLOAT_TYPES: tuple[str, ...] = ("f32", "f16", "bf16")
"""Unquantized GGUF types, in the order the convert stage prefers them as the quantization source."""


class BuildError(StageError):
    """A build cannot go on (unsupported backend, refused requantization, a failed verify policy)."""


class Progress(Protocol):
    """Where the pipeline reports what it does (the CLI renders it; tests may record it)."""

    def start(self, stage: str) -> None: ...
    def step(self, stage: str, message: str) -> None: ...
    def done(self, stage: str, seconds: float, summary: str) -> None: ...


class SilentProgress:
    def start(self, stage: str) -> None:
        pass

    def step(self, stage: str, message: str) -> None:
        pass

    def done(self, stage: str, seconds: float, summary: str) -> None:
        pass


@dataclass(frozen=True)
class BuildOptions:
    allow_requantize: bool = False  # `--allow-requantize`: quantize an already quantized GGUF
    verify: bool = True  # `--no-verify` turns the verify stage off (no figures are written)
    threads: int | None = None


@dataclass
class Built:
    """One GGUF the build has: a conversion, a quantization, the source file or a stored variant."""

    quantization: str
    weight: WeightFile
    info: GGUFInfo
    seconds: float = 0.0
    cached: bool = True  # False only when this build made it (a cache miss)
    adapters: tuple[WeightFile, ...] = ()  # inherited from a stored variant

    @property
    def bits(self) -> float:
        q = QUANTIZATIONS.get(self.quantization)
        return float(q["bits"]) if q else 0.0


@dataclass
class VariantOutput:
    variant: Variant  # quantization resolved
    built: Built
    report: dict[str, JSONValue] | None = None
    verify_seconds: float = 0.0
    verified_now: bool = False  # the verify stage ran (not a cache hit, not skipped)
    manifest: str = ""
    size: int = 0

    @property
    def did_work(self) -> bool:
        """Whether this build quantized/converted or verified this variant (False: all from the cache)."""
        return not self.built.cached or self.verified_now


@dataclass(frozen=True)
class StageTiming:
    name: str
    seconds: float
    summary: str


@dataclass
class BuildContext:
    plan: BuildPlan
    ref: Reference
    store: Store
    cache: BuildCache
    options: BuildOptions
    progress: Progress
    fetched: Fetched | None = None
    floats: dict[str, Built] = field(default_factory=dict)  # conversions by float type
    base: Built | None = None  # the highest-precision GGUF: the quantization source
    outputs: list[VariantOutput] = field(default_factory=list)
    adapters: list[WeightFile] = field(default_factory=list)
    reference: Built | None = None  # the verify reference
    index_digest: str = ""
    tags: list[str] = field(default_factory=list)
    timings: list[StageTiming] = field(default_factory=list)

    def cache_key(self, stage: str, **inputs: CacheValue) -> str:
        """The cache key of a stage run: its inputs plus the versions of the tools it runs."""
        tool_versions: dict[str, CacheValue] = dict(tools.stage_tools(stage))
        return stage_key(stage, tools=tool_versions, **inputs)


@dataclass(frozen=True)
class BuildResult:
    reference: str
    index_digest: str
    tags: list[str]
    variants: list[VariantOutput]
    stages: list[StageTiming]
    cache_hits: int
    cache_misses: int

    def summary(self) -> dict[str, object]:
        """A JSON-able summary (what `ff build --json` prints)."""
        return {
            "reference": self.reference,
            "index": self.index_digest,
            "tags": self.tags,
            "variants": [
                {
                    "name": v.variant.name,
                    "quantization": v.variant.quantization,
                    "target": v.variant.target,
                    "backend": v.variant.backend,
                    "manifest": v.manifest,
                    "size": v.size,
                    "agreement": (v.report or {}).get("agreement"),
                    "perplexity_ratio": (v.report or {}).get("perplexity_ratio"),
                    "seconds": round(v.built.seconds + v.verify_seconds, 3),
                    "work_done": v.did_work,
                }
                for v in self.variants
            ],
            "stages": [
                {"name": s.name, "seconds": round(s.seconds, 3), "summary": s.summary} for s in self.stages
            ],
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
        }


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _convert(fn: Callable[..., object], folder: Path, outtype: str, name: str, out: Path) -> object:
    return fn(folder, out, outtype=outtype, name=name)


def _convert_lora(fn: Callable[..., object], adapter: Path, base: Path | None, out: Path) -> object:
    return fn(adapter, out, base=base)


def _weight(path: Path) -> WeightFile:
    return WeightFile(path, file_digest(path), path.stat().st_size)


def _blob(path: Path) -> WeightFile:
    """A store blob: its name is its digest (checked when it was stored), so it is not hashed again."""
    return WeightFile(path, "sha256:" + path.name, path.stat().st_size)


def _stored(sv: StoredVariant) -> Built:
    weight = sv.files.weights[0]
    return Built(
        sv.ref.quantization,
        _blob(weight),
        read_gguf_info(weight),
        adapters=tuple(_blob(a) for a in sv.files.adapters),
    )


def _cached_gguf(
    ctx: BuildContext, stage: str, key: str, make: Callable[[Path], object]
) -> tuple[WeightFile, float, bool]:
    """Run ``make(out_path)`` through the cache; return the output file, seconds spent and hit flag."""

    def produce(folder: Path) -> dict[str, CacheValue]:
        out = folder / "model.gguf"
        make(out)
        digest = file_digest(out)
        return {"digest": digest, "size": out.stat().st_size}

    start = time.perf_counter()
    entry, hit = ctx.cache.run(stage, key, produce)
    path = entry.file("model.gguf")
    digest, size = entry.meta.get("digest"), entry.meta.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or not path.is_file():
        raise BuildError(f"the {stage} cache entry {entry.path} is damaged; delete it and build again")
    return WeightFile(path, digest, size), time.perf_counter() - start, hit


# --- stages ------------------------------------------------------------------------------------------


def fetch_stage(ctx: BuildContext) -> str:
    for v in ctx.plan.variants:
        if v.backend != "llamacpp":
            raise BuildError(
                f"variant {v.name}: backend {v.backend!r} — its build stages (export, compile) are not "
                "available in this version; only the llamacpp backend (GGUF) can be built"
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
            w, secs, hit = _cached_gguf(
                ctx, "convert", key, functools.partial(_convert, convert_hf_to_gguf, folder, outtype, name)
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
        ctx.base = Built(info.quantization.lower(), _weight(f.path), info)
        return f"source is {info.quantization} GGUF: nothing to convert"
    stored = [_stored(sv) for sv in f.variants if sv.ref.format == "gguf" and sv.files.weights]
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
    w, secs, hit = _cached_gguf(
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
        if v.quantization == "source" and f.kind == FetchedKind.STORE:
            for sv in f.variants:
                if sv.ref.format != "gguf" or not sv.files.weights:
                    continue
                built = _stored(sv)
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
            ctx.adapters.append(_weight(a.path))
            continue
        key = ctx.cache_key("lora", adapter=path_digest(a.path), base=base_digest)
        w, _, _ = _cached_gguf(
            ctx, "lora", key, functools.partial(_convert_lora, convert_peft_lora, a.path, base)
        )
        ctx.adapters.append(w)
    return f"{len(ctx.adapters)} adapter(s)"


_MACHINE_FIELDS = ("path", "reference", "lora", "seconds")
"""Report fields that name local paths or wall time: left out of verify.json so digests reproduce."""


def _report_dict(report: VerifyReport) -> dict[str, JSONValue]:
    raw: dict[str, JSONValue] = report.model_dump(mode="json")
    return {k: v for k, v in raw.items() if k not in _MACHINE_FIELDS}


def _verify_one(ctx: BuildContext, out: VariantOutput, ref: Built) -> None:
    from ffbuild.stages.verify import verify_gguf

    adapters = [*out.built.adapters, *ctx.adapters]
    is_ref = out.built.weight.digest == ref.weight.digest
    policy = ctx.plan.verify
    key = ctx.cache_key(
        "verify",
        weight=out.built.weight.digest,
        reference=None if is_ref else ref.weight.digest,
        adapters=[a.digest for a in adapters],
        prompt=policy.prompt,
    )

    def produce(folder: Path) -> dict[str, CacheValue]:
        start = time.perf_counter()
        report = verify_gguf(
            out.built.weight.path,
            reference=None if is_ref else ref.weight.path,
            prompt=policy.prompt,
            lora=adapters[0].path if adapters else None,
            threads=ctx.options.threads,
        )
        return {"report": _report_dict(report), "seconds": time.perf_counter() - start}

    ctx.progress.step(
        "verify", out.variant.name + (" (reference)" if is_ref else f" against {ref.quantization}")
    )
    entry, hit = ctx.cache.run("verify", key, produce)
    report = entry.meta.get("report")
    if not isinstance(report, dict):
        raise BuildError(f"the verify cache entry {entry.path} is damaged; delete it and build again")
    report = dict(report)
    if is_ref:
        report.update(agreement=1.0, perplexity_ratio=1.0)
    report["reference"] = ref.quantization
    if adapters:
        report["adapters"] = [a.digest for a in adapters]
    out.report = report
    secs = entry.meta.get("seconds")
    out.verify_seconds = float(secs) if isinstance(secs, int | float) and not hit else 0.0
    out.verified_now = not hit


def _check_policy(ctx: BuildContext) -> None:
    policy = ctx.plan.verify
    failures: list[str] = []
    for out in ctx.outputs:
        r = out.report or {}
        name = out.variant.name
        if r.get("loads") is False:
            failures.append(f"{name}: the model does not load ({r.get('error') or 'no reason given'})")
        agreement, ratio = r.get("agreement"), r.get("perplexity_ratio")
        if (
            policy.min_agreement is not None
            and isinstance(agreement, int | float)
            and (agreement < policy.min_agreement)
        ):
            failures.append(
                f"{name}: agreement {agreement:.3f} is below min_agreement {policy.min_agreement}"
            )
        if (
            policy.max_perplexity_ratio is not None
            and isinstance(ratio, int | float)
            and (ratio > policy.max_perplexity_ratio)
        ):
            failures.append(
                f"{name}: perplexity ratio {ratio:.3f} is above "
                f"max_perplexity_ratio {policy.max_perplexity_ratio}"
            )
        if policy.prompt is not None and not str(r.get("sample") or "").strip():
            failures.append(f"{name}: no completion for the VERIFY prompt {policy.prompt!r}")
    if failures:
        raise BuildError("verify failed, nothing was stored:\n  " + "\n  ".join(failures))


def verify_stage(ctx: BuildContext) -> str:
    if not ctx.options.verify:
        return "skipped (--no-verify)"
    candidates = [o.built for o in ctx.outputs]
    if ctx.base is not None:
        candidates.append(ctx.base)
    ref = max(candidates, key=lambda b: b.bits)
    ctx.reference = ref
    for out in ctx.outputs:
        _verify_one(ctx, out, ref)
    _check_policy(ctx)
    return f"reference {ref.quantization}; " + ", ".join(
        f"{o.variant.name} {_num(o.report.get('agreement')):.3f}" for o in ctx.outputs if o.report
    )


def _meta(ctx: BuildContext) -> ModelMeta:
    plan, f = ctx.plan, ctx.fetched
    template, system = plan.template, plan.system
    params: dict[str, object] = dict(plan.parameters)
    messages, licenses, task = list(plan.messages), list(plan.licenses), plan.task
    if f is not None and f.kind == FetchedKind.STORE and f.variants:
        src = f.variants[0]
        template = template if template is not None else src.files.template
        system = system if system is not None else src.files.system
        params = {**src.files.params, **params}
        if not messages:
            from ffbuild.plan import Message

            messages = [Message(role=m["role"], content=m["content"]) for m in src.files.messages]
        licenses = licenses or list(src.files.licenses)
        if plan.task_inferred and src.ref.task:
            task = src.ref.task
    return ModelMeta(
        name=ctx.ref.repository,
        task=task,
        template=template,
        system=system,
        parameters=params,
        messages=messages,
        licenses=licenses,
        labels=plan.labels,
        modelfile=plan.text,
    )


def package_stage(ctx: BuildContext) -> str:
    meta = _meta(ctx)
    runtime = tools.runtime_version() if ctx.options.verify else None
    payloads = [
        VariantPayload(
            variant=o.variant,
            weight=o.built.weight,
            architecture=o.built.info.architecture,
            param_count=o.built.info.param_count,
            precision=o.built.info.precision,
            adapters=(*o.built.adapters, *ctx.adapters),
            verify=o.report,
            runtime=runtime,
        )
        for o in ctx.outputs
    ]
    index, variants, tags = package_model(ctx.store, ctx.ref, meta, payloads)
    for o, d in zip(ctx.outputs, variants, strict=True):
        o.manifest, o.size = d.digest, o.built.weight.size + sum(a.size for a in ctx.adapters)
    ctx.index_digest, ctx.tags = index.digest, tags
    return f"{ctx.ref} → {index.digest[:19]}"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[BuildContext], str]


STAGES: tuple[Stage, ...] = (
    Stage("fetch", fetch_stage),
    Stage("convert", convert_stage),
    Stage("quantize", quantize_stage),
    Stage("adapters", adapters_stage),
    Stage("verify", verify_stage),
    Stage("package", package_stage),
)


def build(
    plan: BuildPlan,
    ref: Reference,
    *,
    store: Store | None = None,
    cache: BuildCache | None = None,
    options: BuildOptions | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Run every stage of :data:`STAGES` on ``plan`` and tag the result as ``ref``."""
    ctx = BuildContext(
        plan=plan,
        ref=ref,
        store=store or Store(),
        cache=cache or BuildCache(),
        options=options or BuildOptions(),
        progress=progress or SilentProgress(),
    )
    hits0, misses0 = len(ctx.cache.hits), len(ctx.cache.misses)
    for stage in STAGES:
        ctx.progress.start(stage.name)
        start = time.perf_counter()
        summary = stage.run(ctx)
        secs = time.perf_counter() - start
        ctx.timings.append(StageTiming(stage.name, secs, summary))
        ctx.progress.done(stage.name, secs, summary)
    return BuildResult(
        reference=str(ref),
        index_digest=ctx.index_digest,
        tags=ctx.tags,
        variants=ctx.outputs,
        stages=ctx.timings,
        cache_hits=len(ctx.cache.hits) - hits0,
        cache_misses=len(ctx.cache.misses) - misses0,
    )
