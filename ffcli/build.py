"""``ff build``: Modelfile → plan → stages → variants in the local store."""

from __future__ import annotations

import atexit
import gc
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ffcli.check import parse_build_args, plan_options
from ffcli.exitcodes import VERIFY_FAILED, Failure
from ffcli.render import RichProgress, figure, human_size, make_progress, print_table

if TYPE_CHECKING:
    from ffbuild.cache import BuildCache
    from ffbuild.plan import BuildPlan
    from ffbuild.stages.context import BuildOptions, BuildResult
    from ffbuild.stages.convert.early import Started
    from registry.reference import Reference


@click.command("build")
@plan_options
@click.option("-t", "--tag", "tag", required=True, help="name:tag to store the model as")
@click.option("--allow-requantize", is_flag=True, help="allow quantizing an already quantized GGUF source")
@click.option("--no-verify", is_flag=True, help="skip the verify stage (no quality figures are stored)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for quantize/verify")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
def build_command(
    modelfile: Path,
    tag: str,
    build_args: tuple[str, ...],
    quantize: tuple[str, ...],
    targets: tuple[str, ...],
    allow_requantize: bool,
    no_verify: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Build a Modelfile into verified model variants in the local store.

    \b
    Examples:
      ff build -f Modelfile -t smollm2:latest
      ff build -f modelfiles/smollm2 -t smollm2 --build-arg SOURCE=./SmolLM2 --quantize q8_0
    """
    from ffbuild.cache import BuildCache, CacheError
    from ffbuild.errors import ModelfileError
    from ffbuild.modelfile import parse_file
    from ffbuild.planner import make_plan
    from registry.reference import ReferenceError, parse_reference

    path = modelfile / "Modelfile" if modelfile.is_dir() else modelfile
    if not path.is_file():
        raise click.ClickException(f"{path}: no such Modelfile")
    try:
        ref = parse_reference(tag)
    except ReferenceError as exc:
        raise click.ClickException(f"-t {tag}: {exc}") from None
    if ref.is_remote or ref.digest is not None:
        raise click.ClickException(f"-t {tag}: give a local name:tag (push it with `ff push` afterwards)")
    try:
        plan = make_plan(
            parse_file(path),
            context=path.resolve().parent,
            modelfile_path=path.resolve(),
            build_args=parse_build_args(build_args),
            quantize=list(quantize) or None,
            targets=list(targets) or None,
        )
    except ModelfileError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from None
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        cache = BuildCache()
    except CacheError as exc:
        raise Failure(str(exc), 1) from None
    # llama.cpp's converter starts now, while the stage modules below load (it needs none of them)
    from ffbuild.stages.convert.early import start_early

    started = start_early(plan, cache)
    try:
        from ffbuild.stages.context import BuildOptions

        _build(plan, ref, cache, started, BuildOptions(allow_requantize, not no_verify, threads), as_json)
    finally:
        started.cancel()
    # The build is over and stored: the interpreter's exit need not search what it made for reference
    # cycles (measured: 0.13-0.15 s of exit after a SmolLM2 build, 0.04-0.07 s with the objects frozen).
    # At exit, not now: a process that goes on (a test calling the command) keeps collecting them.
    atexit.register(gc.freeze)


def _build(
    plan: BuildPlan, ref: Reference, cache: BuildCache, started: Started, options: BuildOptions, as_json: bool
) -> None:
    from ffbuild.build import build
    from ffbuild.cache import CacheError
    from ffbuild.stages.errors import StageError
    from ffruntime.errors import BackendUnavailable, RuntimeFailure
    from registry.store import StoreError

    progress = make_progress()
    try:
        result = build(plan, ref, cache=cache, options=options, progress=progress, started=started)
    except (StageError, StoreError, CacheError, BackendUnavailable, RuntimeFailure) as exc:
        if isinstance(progress, RichProgress):
            progress.close()
        from ffbuild.build import VerifyPolicyError

        raise Failure(str(exc), VERIFY_FAILED if isinstance(exc, VerifyPolicyError) else 1) from None
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    _print_table(result)


def _print_table(result: BuildResult) -> None:
    """Each variant's size, quantization, verify figures and build time, as ``ff build`` prints them."""
    rows = []
    for v in result.variants:
        report = v.report or {}
        rows.append(
            [
                v.variant.name,
                human_size(v.size),
                v.variant.quantization,
                figure(report.get("agreement")),
                figure(report.get("perplexity_ratio")),
                figure(report.get("cosine")),
                figure(report.get("wer")),
                f"{v.built.seconds + v.verify_seconds:.1f}s" if v.did_work else "cached",
            ]
        )
    print_table(
        ["VARIANT", "SIZE", "QUANTIZATION", "AGREEMENT", "PPL RATIO", "COSINE", "WER", "TIME"],
        rows,
        title=f"{result.reference}  {result.index_digest[:19]}",
    )


COMMANDS = [build_command]
