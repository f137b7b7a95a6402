"""The verify stage (:func:`run`): every variant measured against the highest-precision GGUF; VERIFY
thresholds.

GGUF variants are measured by :mod:`ffbuild.stages.verify.gguf` (llama.cpp), ONNX Runtime GenAI exports
by :mod:`ffbuild.stages.verify.genai`, each report through the build cache; a stored variant reused as
it is (``FROM name:tag``) keeps its stored report (:mod:`ffbuild.stages.verify.stored`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ffbuild.cache import CacheValue
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    FetchedKind,
    JSONValue,
    VariantOutput,
    VerifyPolicyError,
    as_number,
)
from ffbuild.stages.errors import StageError
from ffbuild.stages.tools import package_version
from ffbuild.stages.verify.genai import verify_genai
from ffbuild.stages.verify.gguf import (
    DEFAULT_TEXT,
    VerifyReport,
    reference_text,
    verify_gguf,
    verify_gguf_ahead,
)
from ffbuild.stages.verify.projector import MIN_COSINE
from ffbuild.stages.verify.stored import stored_report
from ffruntime.errors import RuntimeFailure
from ffruntime.settings import available_cores

_MACHINE_FIELDS = ("path", "reference", "lora", "seconds")
"""Report fields that name local paths or wall time: left out of verify.json so digests reproduce."""


def _report_dict(report: VerifyReport) -> dict[str, JSONValue]:
    raw: dict[str, JSONValue] = report.model_dump(mode="json")
    return {k: v for k, v in raw.items() if k not in _MACHINE_FIELDS}


def verify_template(ctx: BuildContext) -> str | None:
    """The Go TEMPLATE the artifact will carry (the Modelfile's, else the stored model's it is built FROM):
    verify lays its prompt out with it, as the server will. SYSTEM and MESSAGEs are left out: they are
    what the model is told, not how its prompt is laid out, and a change of them reuses verify's results."""
    inherited = ctx.fetched.inherited if ctx.fetched is not None else None
    if ctx.plan.template is not None or inherited is None:
        return ctx.plan.template
    return inherited.template


def _verify_one(ctx: BuildContext, out: VariantOutput, ref: Built) -> None:
    genai = out.variant.family == "genai"  # an ONNX Runtime GenAI export (ffbuild.stages.genai)
    adapters = [] if genai else [*out.built.adapters, *ctx.adapters]
    is_ref = out.built.weight.digest == ref.weight.digest
    policy = ctx.plan.verify
    stage = "genai_verify" if genai else "verify"
    template = verify_template(ctx)
    if not genai and (carried := stored_report(ctx, out, adapters, template)) is not None:
        ctx.progress.step("verify", f"{out.variant.name}: weights unchanged, the stored variant's report")
        out.report, out.runtime = carried.report, carried.runtime
        return
    key = ctx.cache_key(
        stage,
        weight=[out.built.weight.digest, *(x.file.digest for x in out.built.extra)]
        if genai
        else out.built.weight.digest,
        reference=None if is_ref else ref.weight.digest,
        adapters=[a.digest for a in adapters],
        prompt=policy.prompt,
        template=template,
    )

    def produce(folder: Path) -> dict[str, CacheValue]:
        start = time.perf_counter()
        if genai:
            report = verify_genai(
                out.built.weight.path.parent,
                reference=ref.weight.path,
                prompt=policy.prompt,
                threads=ctx.options.threads,
                device=out.variant.device,
                template=template,
            )
        else:
            report = verify_gguf(
                out.built.weight.path,
                reference=None if is_ref else ref.weight.path,
                prompt=policy.prompt,
                lora=[a.path for a in adapters],
                threads=ctx.options.threads,
                template=template,
            )
        return {"report": _report_dict(report), "seconds": time.perf_counter() - start}

    ctx.progress.step(
        "verify", out.variant.name + (" (reference)" if is_ref else f" against {ref.quantization}")
    )
    entry, hit = ctx.cache.run(stage, key, produce)
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
    if genai:
        out.runtime = f"onnxruntime-genai {package_version('onnxruntime-genai') or 'unknown'}"
    secs = entry.meta.get("seconds")
    out.verify_seconds = float(secs) if isinstance(secs, int | float) and not hit else 0.0
    out.verified_now = not hit


def ahead(ctx: BuildContext) -> None:
    """Once a fresh float GGUF exists (the convert stage made it; it is the reference of every variant
    quantized from it), measure it in the background while the quantize stage runs, then each variant as
    the quantizer makes it (:meth:`BuildContext.made`), one at a time on one thread
    (:func:`~ffbuild.stages.verify.gguf.verify_gguf_ahead`): the verify stage then finds each report made,
    or waits for the one under way, with the same arguments it would measure with. With ADAPTERs only
    the reference's pass over the verification text is made ahead (the adapters come later). Not on a
    rebuild whose conversion came from the cache (its verify results are likely cached too), nor twice."""
    base = ctx.base
    if not ctx.options.verify or base is None or base.cached or base.weight.path.suffix != ".gguf":
        return
    if any(t.name == "ff-verify-ahead" for t in ctx.ahead) or not any(
        v.family == "gguf" for v in ctx.plan.variants
    ):
        return
    path, threads = base.weight.path, ctx.options.threads
    if ctx.plan.adapters:

        def work() -> None:
            with contextlib.suppress(StageError, RuntimeFailure):  # the verify stage meets it and reports it
                reference_text(path, DEFAULT_TEXT, threads)

        thread = threading.Thread(target=work, name="ff-verify-ahead")
        ctx.ahead.append(thread)
        thread.start()
        return
    turn = threading.Lock()
    prompt, template = ctx.plan.verify.prompt, verify_template(ctx)
    started: set[str] = set()

    def start(built: Built) -> None:
        if built.format != "gguf" or built.weight.path.suffix != ".gguf" or built.bits > base.bits:
            return
        if built.weight.digest in started:
            return
        started.add(built.weight.digest)
        reference = None if built.weight.digest == base.weight.digest else path
        ctx.ahead.append(
            verify_gguf_ahead(
                built.weight.path,
                reference=reference,
                prompt=prompt,
                threads=threads,
                template=template,
                turn=turn,
            )
        )

    start(base)
    ctx.listeners.append(start)


def _check_policy(ctx: BuildContext) -> None:
    policy = ctx.plan.verify
    failures: list[str] = []
    for out in llm_outputs(ctx):
        r = out.report or {}
        name = out.variant.name
        if r.get("loads") is False:
            failures.append(f"{name}: the model does not load ({r.get('error') or 'no reason given'})")
        elif r.get("error"):
            failures.append(f"{name}: {r.get('error')}")
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
        raise VerifyPolicyError("verify failed, nothing was stored:\n  " + "\n  ".join(failures))


def verify_workers(ctx: BuildContext, variants: int) -> int:
    """How many GGUF variants are verified side by side: one per core, fewer when ``--threads`` gives each
    more. Chosen when each evaluator began on one thread (one at a time left the other cores idle;
    2 cores, SmolLM2 f16 + q8_0 + q4_k_m: docs/benchmarks.md). Under the current rule of
    :mod:`ffruntime.llamacpp.threads` an evaluator may take every free core, and evaluators of one
    process do not see each other in its CPU reading (it subtracts the process's own time), so two may
    oversubscribe the cores; its collapse net bounds that, and the verified build measured the same
    after that rule landed (1.58× llama.cpp against 1.64×)."""
    return max(1, min(variants, available_cores() // max(1, ctx.options.threads or 1)))


def gguf_outputs(ctx: BuildContext) -> list[VariantOutput]:
    return [o for o in ctx.outputs if o.built.format == "gguf"]


def llm_outputs(ctx: BuildContext) -> list[VariantOutput]:
    """The variants this stage verifies: GGUF ones and ONNX Runtime GenAI exports (tensor variants
    have their own stage, :mod:`ffbuild.stages.verify_tensor`)."""
    return [o for o in ctx.outputs if o.built.format == "gguf" or o.variant.family == "genai"]


def run(ctx: BuildContext) -> str:
    if not ctx.options.verify:
        return "skipped (--no-verify)"
    candidates = [o.built for o in gguf_outputs(ctx)]
    if ctx.base is not None:
        candidates.append(ctx.base)
    ref = max(candidates, key=lambda b: b.bits)
    ctx.reference = ref
    side_by_side = gguf_outputs(ctx)
    with ThreadPoolExecutor(verify_workers(ctx, len(side_by_side)), thread_name_prefix="ff-verify") as pool:
        for _ in pool.map(lambda o: _verify_one(ctx, o, ref), side_by_side):
            pass
    for out in llm_outputs(ctx):
        if out not in side_by_side:  # ONNX Runtime GenAI exports: one at a time
            _verify_one(ctx, out, ref)
    projector = _verify_projector(ctx, ref)
    _check_policy(ctx)
    return f"reference {ref.quantization}; " + ", ".join(
        f"{o.variant.name} {as_number(o.report.get('agreement')):.3f}" for o in llm_outputs(ctx) if o.report
    ) + projector


def _verify_projector(ctx: BuildContext, ref: Built) -> str:
    """The projector layer's image (or audio) embeddings against the source folder's vision (or audio)
    tower (when the build has both), reported on every GGUF variant; below :data:`projector.MIN_COSINE`
    the build fails."""
    fetched = ctx.fetched
    if ctx.projector is None or fetched is None or fetched.path is None:
        return ""
    if fetched.kind != FetchedKind.HF_FOLDER:
        return ""
    folder, proj = fetched.path, ctx.projector
    key = ctx.cache_key("verify_projector", projector=proj.weight.digest, model=ref.weight.digest)
    ctx.progress.step("verify", f"projector {proj.weight_name} against {folder.name}'s encoder")

    def produce(_: Path) -> dict[str, CacheValue]:
        from ffbuild.stages.verify.projector import verify_projector

        threads = ctx.options.threads or 0
        return {"report": verify_projector(folder, ref.weight.path, proj.weight.path, threads)}

    entry, _ = ctx.cache.run("verify_projector", key, produce)
    report = entry.meta.get("report")
    if not isinstance(report, dict):
        raise BuildError(f"the verify cache entry {entry.path} is damaged; delete it and build again")
    for out in gguf_outputs(ctx):
        out.report = {**(out.report or {}), "projector": report}
    low = report.get("min_cosine")
    if isinstance(low, int | float) and low < MIN_COSINE:
        raise VerifyPolicyError(f"verify failed, nothing was stored: the projector's embeddings reach "
                                f"cosine {low:.4f} against the source model's, below {MIN_COSINE}")
    if isinstance(low, int | float):
        return f"; projector cosine {low:.4f}"
    return f"; projector not checked ({report.get('error')})"
