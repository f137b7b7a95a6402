"""The ``ff`` command line: a thin layer of click commands over importable functions.

Each module named in :data:`COMMAND_MODULES` defines ``COMMANDS``, a list of click commands, and
:data:`COMMAND_MODULES` says which module holds which command: the ``ff`` group imports a command's
module only when that command runs (``ff build`` starts llama.cpp's converter sooner for not importing
the registry client, the server and the rest first), and every module for ``ff --help``.
Heavy imports happen inside the commands, so ``ff --help`` is fast.
"""

from __future__ import annotations

import importlib

import click

from ffbuild import __version__

COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "check": ("check",),
    "remote": ("push", "pull", "login", "logout"),
    "build": ("build",),
    "store": ("list", "show", "rm", "tag", "prune"),
    "run": ("run",),
    "serve": ("serve", "ps"),
    "delivery": ("sign", "verify", "sbom", "export"),
}
"""Each ``ffcli`` module with commands → the names of its commands (``tests/ffcli/test_cli_commands.py``
checks it against each module's ``COMMANDS``)."""


class _Commands(click.Group):
    """The ``ff`` group: each command's module imported when the command is first asked for."""

    def _module_of(self, name: str) -> str | None:
        return next((m for m, names in COMMAND_MODULES.items() if name in names), None)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for names in COMMAND_MODULES.values() for name in names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = self._module_of(cmd_name)
            if module is None:
                return None
            for command in importlib.import_module(f"ffcli.{module}").COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)


@click.group(
    cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="ff")
def main() -> None:
    """FerrousForge: build Modelfiles into OCI model artifacts, move them through registries, serve them.

    \b
    Examples:
      ff check -f Modelfile
      ff build -f Modelfile -t smollm2:latest
      ff serve
    """
