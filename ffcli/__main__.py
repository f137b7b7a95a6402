"""``python -m ffcli``: the ``ff`` command, for environments where the console script is not on PATH."""

from ffcli import main

main(prog_name="ff")
