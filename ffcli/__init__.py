"""The ``ff`` command line: a thin layer of click commands over importable functions.

Each module named in ``COMMAND_MODULES`` defines ``COMMANDS``, a list of click commands; they are
added to the ``ff`` group here. Heavy imports happen inside the commands, so ``ff --help`` is fast.
"""

from __future__ import annotations

import importlib

import click

from ffbuild import __version__

COMMAND_MODULES: tuple[str, ...] = ("check", "remote", "build", "store", "run", "serve", "delivery")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ff")
def main() -> None:
    """FerrousForge: build Modelfiles into OCI model artifacts, move them through registries, serve them.

    \b
    Examples:
      ff check -f Modelfile
      ff build -f Modelfile -t smollm2:latest
      ff serve
    """


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"ffcli.{_name}")
    for _command in _module.COMMANDS:
        main.add_command(_command)
