"""Verify reports carried over from the stored model a build is FROM, when its weights are unchanged.

``FROM name:tag`` with only a new SYSTEM, PARAMETER, MESSAGE or LICENSE on top (``ollama create
--from``, ``POST /api/create``) reuses the stored variants' GGUF blobs as they are. Their verify report,
stored with them (``verify.json``), already says how those bytes behave, so measuring them again only
costs time (and, with the stored reference not among the variants, would report a different reference).
A stored variant's report is carried over when everything verify reads is the same as when it was made:
the weight blob, the adapters (the stored variant's own, no new ADAPTER), the template the prompt is laid
out with (what the new model will carry: the stored one unless the Modelfile gives a TEMPLATE) and the
VERIFY prompt. Anything else — a new quantization, a new adapter, a new TEMPLATE — is measured as usual.
Only a report this ff's own verify stage wrote is carried (the store marks each ``verify.json`` the package
stage writes, :meth:`registry.store.Store.mark_measured`): one that came with ``ff pull`` is the claim of
whoever pushed it, and is measured again. The carried report keeps its reference (which may be a variant the
new model does not hold, e.g. the f16 the stored model was converted to) and the runtime annotation it was
measured with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from ffbuild.stages.context import BuildContext, FetchedKind, JSONValue, VariantOutput, WeightFile
from ffbuild.stages.verify.gguf import DEFAULT_PROMPT
from registry.oci import ANN_RUNTIME


@dataclass(frozen=True)
class StoredReport:
    report: dict[str, JSONValue]
    runtime: str | None  # the io.ferrousforge.runtime annotation of the stored variant
    variant: str  # the stored variant's manifest digest


def _blob_digest(name: str) -> str:
    return "sha256:" + name


def stored_report(
    ctx: BuildContext, out: VariantOutput, adapters: list[WeightFile], template: str | None
) -> StoredReport | None:
    """The stored variant's report for ``out``'s weights when verify would measure exactly what it did."""
    f = ctx.fetched
    if f is None or f.kind != FetchedKind.STORE or out.variant.family != "gguf":
        return None
    wanted_adapters = [a.digest for a in adapters]
    prompt = ctx.plan.verify.prompt or DEFAULT_PROMPT
    for sv in f.variants:
        files = sv.files
        if sv.ref.format != "gguf" or not files.weights or not files.verify:
            continue
        if _blob_digest(files.weights[0].name) != out.built.weight.digest:
            continue
        if [_blob_digest(a.name) for a in files.adapters] != wanted_adapters or files.template != template:
            continue
        written = files.files.get("verify.json")
        if written is None or not ctx.store.measured_here(_blob_digest(written.name)):
            continue  # a report that came with a pull is its pusher's claim: measure it here
        report = cast(dict[str, JSONValue], dict(files.verify))  # verify.json, as package wrote it
        if report.get("task") == "generate" and report.get("prompt") != prompt:
            continue
        return StoredReport(report, files.annotations.get(ANN_RUNTIME), files.digest)
    return None
