"""``ff check``: parse and plan a Modelfile; print the plan, or every error with its position."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ffbuild.plan import BuildPlan


def parse_build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` pairs; a bare ``NAME`` takes its value from the environment (as docker build)."""
    out: dict[str, str] = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--build-arg")
        if not eq:
            if name not in os.environ:
                raise click.BadParameter(
                    f"{name} has no value and is not set in the environment", param_hint="--build-arg"
                )
            value = os.environ[name]
        out[name] = value
    return out


F = TypeVar("F", bound=Callable[..., Any])


def plan_options(f: F) -> F:
    """The options ``ff check`` and ``ff build`` share: the Modelfile, its ARGs, QUANTIZE/TARGET overrides."""
    options = [
        click.option(
            "-f",
            "--file",
            "modelfile",
            type=click.Path(path_type=Path),
            default=Path("Modelfile"),
            show_default=True,
            help="the Modelfile (or a folder holding one)",
        ),
        click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE", help="set an ARG"),
        click.option(
            "--quantize", multiple=True, metavar="TYPE", help="replace the QUANTIZE types (repeatable)"
        ),
        click.option(
            "--target", "targets", multiple=True, metavar="TARGET", help="replace the TARGETs (repeatable)"
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("check")
@plan_options
@click.option("--json", "as_json", is_flag=True, help="print the plan (or the errors) as JSON on stdout")
def check_command(
    modelfile: Path,
    build_args: tuple[str, ...],
    quantize: tuple[str, ...],
    targets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check a Modelfile: parse it, resolve its sources and plan its variants, without building.

    Prints the variants (one per QUANTIZE type × TARGET) with their device, backend and quantization,
    and the source, task and parameters; or every error as file:line:column with the line, a caret and
    a hint. Exits with 1 when there is an error.

    \b
    Examples:
      ff check -f Modelfile
      ff check -f modelfiles/smollm2 --build-arg SOURCE=./SmolLM2-135M-Instruct
      ff check -f Modelfile --quantize q4_k_m --target "cuda:sm_90 BACKEND llamacpp"
      ff check -f Modelfile --json | jq .plan.variants
    """
    from ffbuild.errors import ModelfileError
    from ffbuild.modelfile import parse_file
    from ffbuild.planner import make_plan

    path = modelfile / "Modelfile" if modelfile.is_dir() else modelfile
    args = parse_build_args(build_args)
    try:
        plan = make_plan(
            parse_file(path),
            context=path.resolve().parent,
            modelfile_path=path.resolve(),
            build_args=args,
            quantize=list(quantize) or None,
            targets=list(targets) or None,
        )
    except ModelfileError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "errors": [e.to_dict() for e in exc.errors]}, indent=2))
        else:
            click.echo(str(exc), err=True)
            count = len(exc.errors)
            click.echo(f"{count} error{'s' if count > 1 else ''} in {path}", err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "plan": plan_json(plan)}, indent=2))
    else:
        _print_plan(plan)


def plan_json(plan: BuildPlan) -> dict[str, Any]:
    """The plan as JSON-ready data, with each variant's name and target spelled out."""
    data = plan.model_dump(mode="json")
    for v, out in zip(plan.variants, data["variants"], strict=True):
        out["name"] = v.name
        out["target"] = v.target
    return data


def _print_plan(plan: BuildPlan) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    source = plan.source
    where = str(source.path or source.reference or (f"hf://{source.repo}" if source.repo else source.raw))
    if source.revision:
        where += f"@{source.revision}"
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    info.add_row("modelfile", Text(str(plan.modelfile or "-")))
    info.add_row("source", Text(f"{where} ({source.kind.value})"))
    info.add_row("task", Text(plan.task + (" (inferred)" if plan.task_inferred else "")))
    for label, value in _details(plan):
        info.add_row(label, Text(value))
    console.print(info)

    table = Table(title=f"{len(plan.variants)} variant{'s' if len(plan.variants) != 1 else ''}")
    for column in ("NAME", "DEVICE", "BACKEND", "QUANTIZATION", "OPTIONS"):
        table.add_column(column)
    for v in plan.variants:
        options = " ".join(f"{k}={val}" for k, val in sorted(v.options.items()))
        cells = (v.name, v.target, v.backend, v.quantization, options or "-")
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
    if plan.parameters:
        params = Table(title="parameters")
        params.add_column("NAME")
        params.add_column("VALUE")
        for name, param in plan.parameters.items():
            params.add_row(Text(name), Text(json.dumps(param, ensure_ascii=False)))
        console.print(params)
    for warning in plan.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))


def _details(plan: BuildPlan) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if plan.adapters:
        rows.append(("adapters", ", ".join(f"{a.path} ({a.kind})" for a in plan.adapters)))
    if plan.draft is not None:
        rows.append(("draft", str(plan.draft.path or plan.draft.reference or plan.draft.raw)))
    if plan.template is not None:
        rows.append(("template", _short(plan.template)))
    if plan.system is not None:
        rows.append(("system", _short(plan.system)))
    if plan.messages:
        rows.append(("messages", str(len(plan.messages))))
    if plan.licenses:
        rows.append(("licenses", str(len(plan.licenses))))
    for key, value in plan.labels.items():
        rows.append((f"label {key}", value))
    verify = plan.verify.model_dump(exclude_none=True)
    if verify:
        rows.append(("verify", " ".join(f"{k}={v}" for k, v in verify.items())))
    if plan.requires:
        rows.append(("requires", plan.requires))
    if plan.build_args:
        rows.append(("args", " ".join(f"{k}={v}" for k, v in plan.build_args.items())))
    return rows


def _short(text: str, limit: int = 60) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


COMMANDS = [check_command]
