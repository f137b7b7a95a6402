"""``ff run`` (local, through ffruntime) and ``ff serve`` give the same greedy text for the same request.

Both choose the variant with registry.select, load it through ffruntime with the same settings and
assemble the prompt with ffruntime.prompting: the Modelfile's Go TEMPLATE (``tiny``) or the model's
own chat template (``smollm2``), its SYSTEM and PARAMETERs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.ffserve.serve_testkit import ROOT, Server

PROMPT = "Name three colours of the rainbow."


def _ff_run(home: Path, model: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ffcli", "run", "--local", "--temperature", "0", "--max-tokens", "40"]
    return subprocess.run([*cmd, "--threads", "1", *flags, model, PROMPT], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny:latest", "smollm2:latest"])
def test_ff_run_and_ff_serve_return_the_same_text(ff_home: Path, server: Server, model: str) -> None:
    run = _ff_run(ff_home, model)
    assert run.returncode == 0, run.stderr
    body = {
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"temperature": 0, "num_predict": 40},
    }
    served = httpx.post(server.url + "/api/chat", json=body, timeout=300).json()["message"]["content"]
    assert served.strip(), "the server answered nothing"
    assert run.stdout.strip() == served.strip()


@pytest.mark.slow
def test_ff_run_through_a_running_server_gives_the_same_text(ff_home: Path, server: Server) -> None:
    env = {**os.environ, "FF_HOME": str(ff_home), "FF_HOST": server.url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ffcli", "run", "--temperature", "0", "--max-tokens", "40"]
    via = subprocess.run([*cmd, "tiny:latest", PROMPT], capture_output=True, text=True, env=env, timeout=300)
    assert via.returncode == 0, via.stderr
    local = _ff_run(ff_home, "tiny:latest")
    assert via.stdout.strip() == local.stdout.strip() != ""
