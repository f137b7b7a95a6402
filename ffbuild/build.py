"""The build pipeline: a BuildPlan → verified variants in the local store.

:func:`build` runs the stages of :data:`ffbuild.stages.order.STAGES` — fetch → convert → quantize →
genai → adapters → export → compile → verify → verify-tensor → package, each the ``run`` of its module
under ``ffbuild/stages/`` — over one :class:`BuildContext`, each stage seeing the variants of its
families. Every stage that does work runs through the build cache (:mod:`ffbuild.cache`), keyed by the
digests of its inputs, so a rebuild with nothing changed converts, quantizes and verifies nothing and
writes the same digests.
"""

from __future__ import annotations

import time

from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    BuildOptions,
    BuildResult,
    Built,
    Progress,
    SilentProgress,
    StageTiming,
    VariantOutput,
    VerifyPolicyError,
)
from ffbuild.stages.convert.early import Started
from ffbuild.stages.order import STAGES, Stage
from ffruntime import tracing
from registry.choices import Family
from registry.reference import Reference
from registry.store import Store

__all__ = [
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
    "VerifyPolicyError",
    "build",
]


def _family_plan(plan: BuildPlan, families: tuple[Family, ...] | None) -> BuildPlan | None:
    if families is None:
        return plan
    variants = tuple(v for v in plan.variants if v.family in families)
    return plan.model_copy(update={"variants": variants}) if variants else None


def _start_ahead(ctx: BuildContext, plan: BuildPlan, later: tuple[Stage, ...]) -> None:
    """Let each later stage of this build start what it can in the background (:attr:`Stage.ahead`)."""
    narrowed = ctx.plan
    ctx.plan = plan
    try:
        for stage in later:
            if stage.ahead is not None and _family_plan(plan, stage.families) is not None:
                stage.ahead(ctx)
    finally:
        ctx.plan = narrowed


def build(
    plan: BuildPlan,
    ref: Reference,
    *,
    store: Store | None = None,
    cache: BuildCache | None = None,
    options: BuildOptions | None = None,
    progress: Progress | None = None,
    started: Started | None = None,
) -> BuildResult:
    """Run every stage of :data:`STAGES` on ``plan`` and tag the result as ``ref``. ``started``: the
    conversions :func:`~ffbuild.stages.convert.early.start_early` began for this plan (with ``cache``);
    the build takes them over and stops those it does not need."""
    ctx = BuildContext(
        plan=plan,
        ref=ref,
        store=store or Store(),
        cache=cache or BuildCache(),
        options=options or BuildOptions(),
        progress=progress or SilentProgress(),
        started=started or Started(),
    )
    hits0, misses0 = len(ctx.cache.hits), len(ctx.cache.misses)
    tracing.configure("ff-build")  # OTEL_* set: a span for the build, a child per stage
    with tracing.span("ff build", reference=str(ref), variants=len(plan.variants)):
        try:
            for i, stage in enumerate(STAGES):
                narrowed = _family_plan(plan, stage.families)
                if narrowed is None:
                    continue
                _start_ahead(ctx, plan, STAGES[i + 1 :])
                ctx.plan = narrowed
                ctx.progress.start(stage.name)
                start = time.perf_counter()
                with tracing.span(f"build.{stage.name}", stage=stage.name):
                    summary = stage.run(ctx)
                secs = time.perf_counter() - start
                ctx.timings.append(StageTiming(stage.name, secs, summary))
                ctx.progress.done(stage.name, secs, summary)
        finally:
            ctx.started.cancel()
            for thread in ctx.ahead:
                thread.join()
    return BuildResult(
        reference=str(ref),
        index_digest=ctx.index_digest,
        tags=ctx.tags,
        variants=ctx.outputs,
        stages=ctx.timings,
        cache_hits=len(ctx.cache.hits) - hits0,
        cache_misses=len(ctx.cache.misses) - misses0,
    )
