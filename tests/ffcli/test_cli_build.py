"""``ff build`` as a subprocess: errors are messages with exit 1 (never tracebacks); a GGUF build works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.store import Store

FF = [sys.executable, "-c", "from ffcli import main; main()"]
REPO = Path(__file__).resolve().parents[2]


def ff(home: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}
    return subprocess.run([*FF, *args], env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def _fails(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_modelfile_error_shows_file_line_column_and_caret(tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM ./x.gguf\nPARAMETER temperature hot\n")
    proc = ff(tmp_path / "ff", "build", "-f", str(mf), "-t", "m:1")
    _fails(proc, f"{mf}:2:", "PARAMETER temperature hot", "^")


def test_missing_modelfile_and_bad_tag(tmp_path: Path, smollm2_gguf: Path) -> None:
    _fails(ff(tmp_path / "ff", "build", "-f", str(tmp_path / "nope"), "-t", "m:1"), "no such Modelfile")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {smollm2_gguf}\n")
    _fails(ff(tmp_path / "ff", "build", "-f", str(mf), "-t", "Bad Name"), "invalid")


def test_requantize_refused_then_allowed(tmp_path: Path, smollm2_gguf: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {smollm2_gguf}\nQUANTIZE q8_0\n")
    _fails(
        ff(tmp_path / "ff", "build", "-f", str(mf), "-t", "m:1"),
        "already quantized (q4_1)",
        "--allow-requantize",
    )
    assert Store(tmp_path / "ff" / "store").tags() == []
    ok = ff(
        tmp_path / "ff", "build", "-f", str(mf), "-t", "m:1", "--allow-requantize", "--no-verify", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert [v["name"] for v in doc["variants"]] == ["q8_0-cpu"]
    assert doc["tags"] == ["m:1", "m:1-q8_0-cpu"]


def test_a_backend_this_machine_lacks_is_a_clear_error(tmp_path: Path, minilm_folder: Path) -> None:
    """TensorRT is installed nowhere here: the build stops naming it (and what to install)."""
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {minilm_folder}\nQUANTIZE fp16\nTARGET cuda BACKEND tensorrt\nTASK embed\n")
    _fails(ff(tmp_path / "ff", "build", "-f", str(mf), "-t", "m:1"), "fp16-cuda-tensorrt", "TensorRT")


@pytest.mark.slow
def test_gguf_build_with_verify_prints_a_summary(tmp_path: Path, smollm2_gguf: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {smollm2_gguf}\nQUANTIZE q4_1 q8_0 requantize=true\nSYSTEM Be brief.\n")
    proc = ff(tmp_path / "ff", "build", "-f", str(mf), "-t", "smol:1")
    assert proc.returncode == 0, proc.stderr
    for stage in ("fetch", "convert", "quantize", "adapters", "verify", "package"):
        assert f"[{stage}] done in" in proc.stderr  # plain progress lines when stderr is not a terminal
    lines = proc.stdout.splitlines()
    assert lines[1].split() == [
        "VARIANT",
        "SIZE",
        "QUANTIZATION",
        "AGREEMENT",
        "PPL",
        "RATIO",
        "COSINE",
        "WER",
        "TIME",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"q4_1-cpu", "q8_0-cpu"}
    assert rows["q8_0-cpu"][4] == "1.000"  # the reference: the highest precision variant
    assert 0.5 < float(rows["q4_1-cpu"][4]) < 1.0
