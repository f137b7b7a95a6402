"""ff build exits 3 when a variant fails the Modelfile's VERIFY thresholds (docs/delivery.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_verify_threshold_failure_is_exit_3(smollm2_gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    # q4_0 requantized from the Q4_1 source, measured against that source: not token-for-token equal
    modelfile.write_text(f"FROM {smollm2_gguf}\nQUANTIZE q4_0\nTASK chat\nVERIFY min_agreement=0.9999\n")
    env = {"FF_HOME": str(tmp_path / "ff"), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(modelfile), "-t", "m:1", "--allow-requantize"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 3, out.stderr
    assert "min_agreement 0.9999" in out.stderr and "nothing was stored" in out.stderr
    listed = subprocess.run([sys.executable, "-m", "ffcli", "list"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert "m:1" not in listed.stdout
    bad = tmp_path / "Bad"
    bad.write_text("FROM\n")
    out = subprocess.run([sys.executable, "-m", "ffcli", "check", "-f", str(bad)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1
