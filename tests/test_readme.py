"""The README's Modelfile example is real: it parses and plans."""

from __future__ import annotations

from pathlib import Path

from ffbuild.modelfile import parse
from ffbuild.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```Dockerfile", 1)[1]
    return block.split("```", 1)[0]


def test_readme_modelfile_plans() -> None:
    plan = make_plan(parse(_example(), "README.md"), context=ROOT)
    assert [v.name for v in plan.variants] == ["f16-cpu", "q8_0-cpu", "q4_k_m-cpu"]
    assert plan.task == "chat" and plan.parameters["stop"] == ["<|im_end|>"]
    assert plan.verify.min_agreement == 0.5


def test_python_m_ffcli_is_the_ff_command() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ffcli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for command in ("build", "check", "pull", "push", "serve", "run", "show"):
        assert f"  {command} " in out.stdout, command
