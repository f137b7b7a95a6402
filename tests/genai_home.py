"""A store holding ``smollm2-multi:latest``: modelfiles/smollm2-multi (q4_0 GGUF for llama.cpp and int4
ONNX for ONNX Runtime GenAI) built by ``ff build`` from the SmolLM2 HF folder.

Each caller gets its own FF_HOME (a fresh store); the build cache is shared under
``~/.cache/ferrousforge-tests/genai-cache`` (keyed by content), so only the first build runs the
converter, the GenAI model builder and verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.models import CACHE_ROOT

REPO = Path(__file__).resolve().parents[1]
MODELFILE = REPO / "modelfiles" / "smollm2-multi" / "Modelfile"
TAG = "smollm2-multi:latest"
SHARED_CACHE = CACHE_ROOT / "genai-cache"
FF = [sys.executable, "-c", "from ffcli import main; main()"]


def ff(home: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*FF, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check:
        assert proc.returncode == 0, f"ff {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def new_home(home: Path) -> Path:
    """``home`` as an FF_HOME whose build cache is the shared one."""
    home.mkdir(parents=True, exist_ok=True)
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    if not (home / "cache").exists():
        (home / "cache").symlink_to(SHARED_CACHE)
    return home


def build_multi(home: Path, source: Path, *extra: str) -> dict[str, object]:
    """``ff build --json`` of modelfiles/smollm2-multi from ``source`` into ``home``."""
    args = ["build", "-f", str(MODELFILE), "-t", TAG, "--build-arg", f"SOURCE={source}", "--json", *extra]
    doc: dict[str, object] = json.loads(ff(new_home(home), *args).stdout)
    return doc
