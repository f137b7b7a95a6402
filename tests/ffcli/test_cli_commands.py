"""The ``ff`` group's table of commands (each command's module is imported only when it runs)."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from ffcli import COMMAND_MODULES, main


def test_the_table_names_every_command_of_every_module() -> None:
    for module, names in COMMAND_MODULES.items():
        commands = importlib.import_module(f"ffcli.{module}").COMMANDS
        assert tuple(c.name for c in commands) == names


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["--help"]).output
    for names in COMMAND_MODULES.values():
        for name in names:
            assert f"\n  {name} " in out
    bad = runner.invoke(main, ["bulid"])
    assert bad.exit_code == 2 and "No such command 'bulid'" in bad.output


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys\nfrom ffcli import main\n"
        "try:\n    main(['build', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('ffcli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "'ffcli.build'" in loaded
    for other in ("remote", "serve", "delivery", "run", "store"):
        assert f"'ffcli.{other}'" not in loaded
