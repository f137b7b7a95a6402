"""``ff check``: through click's CliRunner and through the installed ``ff`` console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ffcli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (REPO / "modelfiles").glob("*/Modelfile"))


def ff_script() -> str:
    """The ``ff`` console script installed beside this Python (or on PATH)."""
    beside = Path(sys.executable).parent / "ff"
    found = str(beside) if beside.is_file() else shutil.which("ff")
    assert found, "the ff console script is not installed: pip install -e ."
    return found


def run_ff(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([ff_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def typos(tmp_path: Path) -> Path:
    (tmp_path / "Modelfile").write_text("FORM ./x\nPARAMETER temprature 1\n")
    (tmp_path / "Modelfile.param").write_text("FROM llama3\nPARAMETER temprature 1\n")
    return tmp_path


def check_typo_output(stderr: str, file: str) -> None:
    lines = stderr.splitlines()
    assert lines[0] == f'{file}:1:1: error: unknown instruction "FORM"'
    assert lines[1:3] == ["  FORM ./x", "  ^"]
    assert "did you mean FROM?" in lines


def check_param_output(stderr: str, file: str) -> None:
    lines = stderr.splitlines()
    assert lines[0] == f'{file}:2:11: error: unknown parameter "temprature"'
    assert lines[1:3] == ["  PARAMETER temprature 1", "            ^"]
    assert "did you mean temperature?" in lines


def test_errors_through_the_cli_runner(typos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(typos)
    result = CliRunner().invoke(main, ["check", "-f", "Modelfile"])
    assert result.exit_code == 1 and result.stdout == ""
    check_typo_output(result.stderr, "Modelfile")
    result = CliRunner().invoke(main, ["check", "--file", "Modelfile.param"])
    assert result.exit_code == 1
    check_param_output(result.stderr, "Modelfile.param")
    assert result.stderr.rstrip().endswith("1 error in Modelfile.param")


def test_errors_through_the_ff_script(typos: Path) -> None:
    proc = run_ff("check", "-f", "Modelfile", cwd=typos)
    assert proc.returncode == 1 and proc.stdout == ""
    check_typo_output(proc.stderr, "Modelfile")
    assert "Traceback" not in proc.stderr
    proc = run_ff("check", "-f", str(typos / "Modelfile.param"), cwd=REPO)
    assert proc.returncode == 1
    check_param_output(proc.stderr, str(typos / "Modelfile.param"))


def test_errors_as_json(typos: Path) -> None:
    proc = run_ff("check", "-f", "Modelfile.param", "--json", cwd=typos)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert doc["errors"] == [
        {
            "file": "Modelfile.param",
            "line": 2,
            "column": 11,
            "message": 'unknown parameter "temprature"',
            "line_text": "PARAMETER temprature 1",
            "expected": [],
            "hint": "did you mean temperature?",
        }
    ]


def test_several_errors_are_all_printed(tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(
        "FROM ./nope.gguf\nQUANTIZE q9\nTARGET cpu BACKEND tensorrt\nTASK x\n"
    )
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path / "Modelfile")])
    assert result.exit_code == 1
    assert result.stderr.count("error:") == 3 and result.stderr.rstrip().endswith(
        f"3 errors in {tmp_path}/Modelfile"
    )


def test_missing_file_and_bad_build_arg(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "cannot read the Modelfile" in result.stderr
    (tmp_path / "Modelfile").write_text("ARG A\nFROM llama3\n")
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path), "--build-arg", "=x"])
    assert result.exit_code == 2 and "is not NAME=VALUE" in result.stderr
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path), "--build-arg", "FF_TEST_UNSET_VARIABLE"])
    assert result.exit_code == 2 and "not set in the environment" in result.stderr


def test_build_arg_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Modelfile").write_text("ARG SOURCE\nFROM ${SOURCE}\n")
    monkeypatch.setenv("SOURCE", "llama3:8b")
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path), "--build-arg", "SOURCE", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["source"]["reference"] == "llama3:8b"


def test_the_plan_table(tmp_path: Path, smollm2_gguf: Path) -> None:
    (tmp_path / "m.gguf").symlink_to(smollm2_gguf)
    (tmp_path / "Modelfile").write_text(
        "FROM ./m.gguf\nQUANTIZE q8_0 q4_k_m requantize=true\nTARGET cpu\nTARGET cuda:sm_90 threads=2\n"
        "PARAMETER temperature 0.2\nPARAMETER stop <|im_end|>\nLABEL team=[bold]red[/bold]\n"
    )
    proc = run_ff("check", "-f", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in (
        "4 variants",
        "q8_0-cpu",
        "q4_k_m-cuda-sm_90",
        "cuda:sm_90",
        "llamacpp",
        "threads=2",
        "gguf-file",
        "chat (inferred)",
        "temperature",
        '["<|im_end|>"]',
        "[bold]red[/bold]",  # text from the Modelfile is shown as it is, never as markup
    ):
        assert expected in out, (expected, out)


def test_ignored_instructions_are_warned_about(tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM llama3\nRENDERER qwen3-coder\nPARSER qwen3-coder\n")
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: line 2: RENDERER is ignored" in result.stdout
    assert "warning: line 3: PARSER is ignored" in result.stdout
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path), "--json"])
    assert [w.split(" is ")[0] for w in json.loads(result.stdout)["plan"]["warnings"]] == [
        "line 2: RENDERER",
        "line 3: PARSER",
    ]


def test_the_plan_as_json(tmp_path: Path, minilm_folder: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "check",
            "-f",
            str(REPO / "modelfiles" / "minilm-onnx"),
            "--build-arg",
            f"SOURCE={minilm_folder}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    plan = doc["plan"]
    assert plan["source"]["kind"] == "hf-folder" and plan["task"] == "embed"
    assert [(v["name"], v["target"], v["backend"]) for v in plan["variants"]] == [
        ("fp32-cpu", "cpu", "onnxruntime"),
        ("int8-cpu", "cpu", "onnxruntime"),
    ]


def test_overrides(tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM llama3\nQUANTIZE q8_0\n")
    result = CliRunner().invoke(
        main,
        ["check", "-f", str(tmp_path), "--quantize", "q4_k_m", "--target", "cuda BACKEND llamacpp", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert [v["name"] for v in json.loads(result.stdout)["plan"]["variants"]] == ["q4_k_m-cuda"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_passes_ff_check(example: Path) -> None:
    result = CliRunner().invoke(main, ["check", "-f", str(example)])
    assert result.exit_code == 0, result.output


def test_examples_with_local_sources(smollm2_gguf: Path, minilm_folder: Path) -> None:
    for name, arg, source in [
        ("default", "WEIGHTS", smollm2_gguf),
        ("smollm2", "SOURCE", smollm2_gguf),
        ("smollm2-adapter", "SOURCE", smollm2_gguf),
        ("minilm", "SOURCE", minilm_folder),
        ("minilm-onnx", "SOURCE", minilm_folder),
        ("minilm-tvm", "SOURCE", minilm_folder),
        ("minilm-tensorrt", "SOURCE", minilm_folder),
    ]:
        args = ["check", "-f", str(REPO / "modelfiles" / name), "--build-arg", f"{arg}={source}", "--json"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (name, result.output)
        plan = json.loads(result.stdout)["plan"]
        assert plan["source"]["path"] == str(source)


def test_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "ff check -f Modelfile" in result.output
