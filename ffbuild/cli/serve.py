"""``ff serve`` and ``ff ps``: thin wrappers; the server lives in ffserve (imported lazily on use)."""

from __future__ import annotations

import click


@click.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve stored models over the Ollama and OpenAI APIs (see `ff serve --help`)."""
    from ffserve.cli import serve as command

    command.main(args=ctx.args, prog_name="ff serve", standalone_mode=True)


@click.command(
    "ps", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.pass_context
def ps(ctx: click.Context) -> None:
    """List the models a running ff serve has loaded."""
    from ffserve.cli import ps as command

    command.main(args=ctx.args, prog_name="ff ps", standalone_mode=True)


COMMANDS = [serve, ps]
