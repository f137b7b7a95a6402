"""``python -m ffbuild``: the ``ff`` command, for environments where the console script is not on PATH."""

from ffbuild.cli import main

main(prog_name="ff")
