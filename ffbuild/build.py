"""The build pipeline: a BuildPlan → verified GGUF variants in the local store.

The build is the list :data:`STAGES` — fetch → convert → quantize → genai → adapters → export →
compile → verify → verify-tensor → package —
each a function over one :class:`BuildContext`. Every stage that does work runs through the build
cache (:mod:`ffbuild.cache`), keyed by the digests of its inputs, so a rebuild with nothing changed
converts, quantizes and verifies nothing and writes the same digests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ffbuild.build_context import (
    FLOAT_TYPES,
    BuildContext,
    BuildError,
    BuildOptions,
    BuildResult,
    Built,
    Progress,
    SilentProgress,
    StageTiming,
    VariantOutput,
)
from ffbuild.build_genai import genai_stage
from ffbuild.build_tensor import compile_stage, export_stage, variant_family, verify_tensor_stage
from ffbuild.build_verify import verify_stage
from ffbuild.build_weights import adapters_stage, convert_stage, fetch_stage, quantize_stage
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Variant
from ffbuild.stages import tools
from ffbuild.stages.fetch import FetchedKind
from ffbuild.stages.genai import is_genai
from ffbuild.stages.package import ModelMeta, VariantPayload, package_model
from registry.reference import Reference
from registry.store import Store

__all__ = [
    "FLOAT_TYPES",
    "STAGES",
    "BuildContext",
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "Built",
    "Progress",
    "SilentProgress",
    "Stage",
    "StageTiming",
    "VariantOutput",
    "build",
]


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
            adapters=() if is_genai(ctx.plan.task, o.variant.backend) else (*o.built.adapters, *ctx.adapters),
            verify=o.report,
            runtime=o.runtime or runtime,
            format=o.built.format,
            weight_name=o.built.weight_name,
            extra=o.built.extra,
            annotations=o.built.annotations,
        )
        for o in ctx.outputs
    ]
    index, variants, tags = package_model(ctx.store, ctx.ref, meta, payloads)
    for o, d in zip(ctx.outputs, variants, strict=True):
        adapters = 0 if is_genai(ctx.plan.task, o.variant.backend) else sum(a.size for a in ctx.adapters)
        extra = sum(x.file.size for x in o.built.extra) + adapters
        o.manifest, o.size = d.digest, o.built.weight.size + extra
    ctx.index_digest, ctx.tags = index.digest, tags
    return f"{ctx.ref} → {index.digest[:19]}"


Family = Literal["gguf", "genai", "tensor"]
"""What builds a variant: ``gguf`` (llama.cpp), ``genai`` (an LLM exported by ONNX Runtime GenAI; its
GGUF conversion is the verify reference), ``tensor`` (ONNX export, then onnxruntime/TVM/TensorRT)."""


def family(plan: BuildPlan, v: Variant) -> Family:
    return "genai" if is_genai(plan.task, v.backend) else variant_family(v)  # type: ignore[return-value]


@dataclass(frozen=True)
class Stage:
    """A step of the build. ``families``: the stage sees only those families' variants in ``ctx.plan``
    and is skipped when there are none; ``None``: it sees them all."""

    name: str
    run: Callable[[BuildContext], str]
    families: tuple[Family, ...] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("fetch", fetch_stage),
    Stage("convert", convert_stage, ("gguf", "genai")),
    Stage("quantize", quantize_stage, ("gguf",)),
    Stage("genai", genai_stage, ("genai",)),  # ONNX Runtime GenAI exports (ffbuild.build_genai)
    Stage("adapters", adapters_stage, ("gguf",)),
    Stage("export", export_stage, ("tensor",)),
    Stage("compile", compile_stage, ("tensor",)),
    Stage("verify", verify_stage, ("gguf", "genai")),
    Stage("verify-tensor", verify_tensor_stage, ("tensor",)),
    Stage("package", package_stage),
)


def _family_plan(plan: BuildPlan, families: tuple[Family, ...] | None) -> BuildPlan | None:
    if families is None:
        return plan
    variants = tuple(v for v in plan.variants if family(plan, v) in families)
    return plan.model_copy(update={"variants": variants}) if variants else None


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
        narrowed = _family_plan(plan, stage.families)
        if narrowed is None:
            continue
        ctx.plan = narrowed
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
