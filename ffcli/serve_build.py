"""The builder ``ff serve`` hands its server: ffbuild's pipeline behind :class:`ffserve.builder.Builder`.

ffserve never imports ffbuild (design.md §1), so ``ff serve`` — which may import both — wires this in,
as it would a loader. A ``POST /api/create`` is built exactly as ``ff build`` builds a Modelfile: the
job's instructions become a :class:`~ffbuild.modelfile.Modelfile` (written out as text by
:func:`ffbuild.modelfile.format` and parsed back, so the stored Modelfile layer is what was built), then
plan → stages → the store. ffbuild's errors become the server's: what the client asked for that cannot
be built is a 400, a missing component a 501.
"""

from __future__ import annotations

from ffserve.builder import BuildJob, Status


class _StatusProgress:
    """ffbuild's progress reports as status lines."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def start(self, stage: str) -> None:
        pass

    def step(self, stage: str, message: str) -> None:
        self.status(f"{stage}: {message}")

    def done(self, stage: str, seconds: float, summary: str) -> None:
        self.status(f"{stage}: {summary}" if summary else stage)


def build_for_server(job: BuildJob, status: Status) -> str:
    """Build ``job`` with ffbuild into ``job.store``; the index digest of the stored model.

    Builds of the same name run one at a time (a file lock in the store), so concurrent creates of one
    name each leave a whole model, the last one's."""
    from ffbuild.build import BuildOptions, build
    from ffbuild.cache import CacheError
    from ffbuild.errors import ModelfileError
    from ffbuild.modelfile import Instruction, Modelfile, format, parse
    from ffbuild.planner import make_plan
    from ffbuild.stages.errors import MissingDependencyError, StageError
    from ffruntime.errors import BackendUnavailable, RuntimeFailure
    from ffserve.errors import BadRequest, NotAvailable, ServeError
    from registry.reference import parse_reference

    try:
        instructions = [Instruction(k, args) for k, args in job.instructions]
        modelfile = parse(format(Modelfile(instructions)), filename="api/create")
        if modelfile.instructions != instructions:  # format() refuses what it cannot write; checked anyway
            raise BadRequest("the request cannot be written as a Modelfile that reads back the same")
        plan = make_plan(
            modelfile,
            context=job.context,
            quantize=[job.quantize] if job.quantize else None,
        )
    except ModelfileError as exc:
        raise BadRequest(str(exc)) from None
    for warning in plan.warnings:
        status(f"warning: {warning}")
    store = job.store
    try:
        with store.lock(f"create-{job.name}"), store.writing():
            result = build(
                plan,
                parse_reference(job.name),
                store=store,
                options=BuildOptions(),
                progress=_StatusProgress(status),
            )
    except (MissingDependencyError, BackendUnavailable) as exc:
        raise NotAvailable(str(exc)) from None
    except (StageError, RuntimeFailure) as exc:  # the request's model cannot be built (or does not load)
        raise BadRequest(str(exc)) from None
    except CacheError as exc:
        raise ServeError(f"the build cache failed: {exc}") from None
    return result.index_digest
